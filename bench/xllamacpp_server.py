"""llama.cpp's own server, in-process through ``xllamacpp``, for ``bench/engine.py --xllamacpp``.

Runs under the interpreter of ``.venv-xllamacpp`` (xllamacpp stays out of chatgate's
environment). It loads the model with continuous batching over ``--parallel`` slots, prints
``listening <url>`` once the model is loaded, and serves until it gets SIGTERM or SIGINT.

    .venv-xllamacpp/bin/python bench/xllamacpp_server.py MODEL --threads 2 --parallel 4 --context 2048
"""

import argparse
import signal
import threading

import xllamacpp  # type: ignore[import-not-found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--parallel", type=int, required=True, help="sequences decoded together")
    parser.add_argument("--context", type=int, required=True, help="context length per sequence")
    args = parser.parse_args()

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.n_parallel = args.parallel
    params.n_ctx = args.context * args.parallel  # the server splits its context among the slots
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.cache_prompt = True  # as chatgate does: a repeated prefix is not evaluated again
    server = xllamacpp.Server(params)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print(f"listening {server.listening_address}", flush=True)
    stop.wait()
    del server  # joins the server's threads


if __name__ == "__main__":
    main()
