"""How fast llama.cpp itself decodes on this machine, with no server at all: the engine's ceiling.

``bench/engine.py`` compares chatgate with llama-cpp-python's own chat API. This script asks the
question under that one: how much can any engine built on llama.cpp get out of these cores? It
runs a bare decode loop (evaluate one token, take the arg-max, repeat; no HTTP, no chat API, no
text) for the shapes an engine can choose between:

* ``one context, N threads``: one sequence, all the threads (what a lone stream gets);
* ``N contexts, 1 thread each``: N processes decoding at the same time, each a sequence of its own
  (chatgate's pool of instances under load);
* ``batch of B``: the cost of evaluating B tokens in one call on one thread, against B single calls
  (continuous batching decodes one token for each of B sequences per call, so this is what
  batching can save). Logits are computed for every token of the call, as a step that decodes
  B sequences needs one row of them per sequence.
* ``B sequences in one call``: what chatgate's engine does (``providers/local/batching.py``): one
  context with a KV cache stream per sequence, and one call decoding a token of each of B
  sequences, on 1 thread and on every thread.

``bench/engine.py --ceiling`` also uses its prefill workers (``run_prefill``): the concurrent
scenario's chat prompts evaluated on one-thread contexts at once, what a server of such contexts
pays before the decode loop above can start.

    .venv/bin/python bench/ceiling.py                 # 2 threads, 128 tokens, 3 repeats
    .venv/bin/python bench/ceiling.py --threads 2 --tokens 256 --repeats 5

Run it on an otherwise idle machine; the contexts run in separate processes so that nothing in
Python serialises them.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / ".chatgate" / "models" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
PROMPT = "<|im_start|>user\nWrite a detailed, long explanation of how hash tables work.<|im_end|>\n<|im_start|>assistant\n"
BATCHES = (1, 2, 4, 8, 16)


def load(model: Path, threads: int) -> Any:
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(model), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False
    )


def decode_rate(llama: Any, tokens: int) -> float:
    """Tokens per second of a greedy one-token-at-a-time loop after the prompt."""
    import numpy as np

    llama.reset()
    llama.eval(llama.tokenize(PROMPT.encode(), special=True))
    n_vocab = llama.n_vocab()
    start = time.perf_counter()
    for _ in range(tokens):
        logits = np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(n_vocab,))
        llama.eval([int(logits.argmax())])
    return tokens / (time.perf_counter() - start)


def batch_cost_ms(llama: Any, size: int, repeats: int) -> float:
    """Median milliseconds of one call that evaluates ``size`` new tokens, with logits for each."""
    from llama_cpp import _internals

    prompt = llama.tokenize(PROMPT.encode(), special=True)
    batch = _internals.LlamaBatch(n_tokens=max(BATCHES), embd=0, n_seq_max=1)
    times = []
    for _ in range(repeats):
        llama.reset()
        llama.eval(prompt)
        batch.set_batch([100 + i for i in range(size)], n_past=len(prompt), logits_all=True)
        start = time.perf_counter()
        llama._ctx.decode(batch)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def sequences_cost_ms(model: Path, threads: int, repeats: int) -> dict[int, float]:
    """Median milliseconds of one call decoding a token of each of B sequences (a KV stream each, as
    the engine's context has: ``chatgate.providers.local.sequence.SharedContext``), for each B in
    BATCHES, on ``threads`` threads."""
    from chatgate.providers.local.sequence import SharedContext

    llama = load(model, threads)
    params = type(llama.context_params).from_buffer_copy(llama.context_params)
    params.n_seq_max = max(BATCHES)
    params.n_ctx = 256 * max(BATCHES)
    params.kv_unified = False
    params.n_batch = params.n_ubatch = 512
    shared = SharedContext(llama._model, params, max(BATCHES))
    prompt = llama.tokenize(PROMPT.encode(), special=True)
    for seq in range(max(BATCHES)):
        shared.evaluate([(token, i, seq, i == len(prompt) - 1) for i, token in enumerate(prompt)], [])
    costs = {}
    for size in BATCHES:
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            shared.evaluate([(100 + seq, len(prompt), seq, True) for seq in range(size)], [])
            times.append(time.perf_counter() - start)
            for seq in range(size):
                shared.context.kv_cache_seq_rm(seq, len(prompt), -1)
        costs[size] = 1000 * statistics.median(times[1:])
    shared.close()
    llama.close()
    return costs


def chat_prompt(system: str, user: str) -> str:
    """A system and a user message in the model's chat template (Qwen2.5's ChatML), ready for the
    assistant's answer: the text a chat server evaluates before its first token."""
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )


def prefill_seconds(llama: Any, prompts: list[str]) -> float:
    """Seconds to evaluate each prompt from an empty cache, one after another (each prompt in one call,
    its last token's logits out, as a server does before sampling its first token)."""
    start = time.perf_counter()
    for prompt in prompts:
        llama.reset()
        llama.eval(llama.tokenize(prompt.encode(), special=True))
    return time.perf_counter() - start


def prefill_worker(model: Path, prompts: list[str], repeats: int) -> None:
    llama = load(model, 1)
    prefill_seconds(llama, [chat_prompt("Warm-up.", "Hello.")])
    for _ in range(repeats):
        print(f"{prefill_seconds(llama, prompts):.4f}", flush=True)


def run_prefill(model: Path, shares: list[list[str]], repeats: int) -> list[float]:
    """One process of one thread per share, each evaluating its prompts, all at the same time; per
    repeat, the seconds until the last of them is done."""
    command = [sys.executable, __file__, "--worker", "--model", str(model), f"--repeats={repeats}"]
    procs = [
        subprocess.Popen([*command, "--prefill", json.dumps(share)], stdout=subprocess.PIPE, text=True)
        for share in shares
    ]
    outputs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit("a prefill worker failed")
    times = [[float(line) for line in out.split()] for out in outputs]
    return [max(column) for column in zip(*times, strict=True)]


def worker(model: Path, threads: int, tokens: int, repeats: int) -> None:
    llama = load(model, threads)
    decode_rate(llama, 8)  # warm-up
    for _ in range(repeats):
        print(f"{decode_rate(llama, tokens):.2f}", flush=True)


def run_workers(model: Path, count: int, threads: int, tokens: int, repeats: int) -> list[float]:
    """``count`` processes decoding together; per repeat, the sum of their rates."""
    command = [sys.executable, __file__, "--worker", "--model", str(model), f"--threads={threads}"]
    command += [f"--tokens={tokens}", f"--repeats={repeats}"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    outputs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit("a decoding worker failed")
    rates = [[float(line) for line in out.split()] for out in outputs]
    return [sum(column) for column in zip(*rates, strict=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=2, help="the machine's threads (default 2)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prefill", help=argparse.SUPPRESS)  # a worker's prompts, as a JSON list
    args = parser.parse_args()
    if args.worker and args.prefill:
        prefill_worker(args.model, json.loads(args.prefill), args.repeats)
        return 0
    if args.worker:
        worker(args.model, args.threads, args.tokens, args.repeats)
        return 0
    if not args.model.is_file():
        parser.error(f"model file not found: {args.model}")

    one = run_workers(args.model, 1, args.threads, args.tokens, args.repeats)
    many = run_workers(args.model, args.threads, 1, args.tokens, args.repeats)
    single = run_workers(args.model, 1, 1, args.tokens, args.repeats)
    print(f"decode, {args.tokens} tokens, median of {args.repeats}:")
    print(f"  one context, {args.threads} threads:      {statistics.median(one):6.1f} tok/s")
    print(f"  one context, 1 thread:        {statistics.median(single):6.1f} tok/s")
    print(f"  {args.threads} contexts, 1 thread each: {statistics.median(many):6.1f} tok/s in total")
    print(
        f"  ratio, {args.threads} contexts / one context: {statistics.median(many) / statistics.median(one):.2f}x"
    )

    llama = load(args.model, 1)
    base = batch_cost_ms(llama, 1, 7)
    print("one call evaluating B tokens, 1 thread (median of 7):")
    for size in BATCHES:
        cost = base if size == 1 else batch_cost_ms(llama, size, 7)
        print(
            f"  B={size:<3} {cost:7.1f} ms   {cost / size:6.1f} ms/token   {cost / base:5.2f}x one token"
            f"   {1000 * size / cost:6.1f} tok/s"
        )
    llama.close()
    for threads in sorted({1, args.threads}):
        costs = sequences_cost_ms(args.model, threads, 9)
        print(f"one call decoding a token of each of B sequences, {threads} thread(s) (median of 9):")
        for size, cost in costs.items():
            print(
                f"  B={size:<3} {cost:7.1f} ms   {cost / costs[1]:5.2f}x one token   {1000 * size / cost:6.1f} tok/s"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
