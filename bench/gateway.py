"""What chatgate adds per request, and how flat its tail is: the same load through chatgate and straight to the upstream.

The method (issue 18): chatgate is pinned to one core with ``taskset``; this load generator and the
stub upstream (``bench/stub_upstream.py``, which answers at once) share the other core. Load is
open-loop at fixed rates: request ``i`` is sent at ``start + i / rate`` whatever the others are
doing, and its latency runs from the moment its bytes are written to the last byte of its answer
(``bench/httpload.py``). Each rate runs on every path in turn, in one run:

- ``direct``: straight to the stub, the baseline the others are compared with;
- ``chatgate``: one chatgate process with a user's API token, so every request does what a real
  one does: the token looked up, the rate limiter, a credit reservation, the relay, settlement and
  the usage row; SQLite by default (``--database-url``, ``--redis-url`` for the replica set-up);
- ``chatgate-w2`` (``--workers 1,2``): ``chatgate serve --workers 2`` on both cores, beside the
  load generator: what a second worker buys on this 2-core machine;
- ``chatgate-nofreeze`` (``--no-freeze``): the same chatgate without ``gc.freeze()`` after start-up
  (``chatgate/heap.py``), as it was before issue 18: what the collector's full passes cost;
- ``bare``: ``bench/bare_relay.py`` on chatgate's server stack, doing nothing but pass the bytes on:
  the floor for any gateway built this way;
- ``bare+books`` (``--books``): the same relay that also commits each request's reservation before
  the upstream call and its settlement before the answer, through chatgate's SQLite fast path: the
  floor for a gateway that keeps issue 14's books;
- ``litellm`` (``--litellm``): LiteLLM's proxy (installed into ``.venv-litellm`` when missing).

``--stream-rates`` runs the same with ``"stream": true`` (streams per second; latency to the end of
the stream). Every chatgate and bare-relay process carries the pause probe
(``bench/pause_probe.py``): for each run it reports the longest event-loop stall, the collections of
each generation and the longest of them, and the resident memory. Then a closed-loop run (N
connections sending as fast as answers come back) gives the most requests per second of each path,
and ``--soak N`` sends N requests through chatgate (one worker) and reads its RSS every 10,000.

Run from the repository root on an otherwise idle machine (check ``uptime``)::

    .venv/bin/python bench/gateway.py --rates 50,150,400,800,1200 --stream-rates 100,300,500 --seconds 10
    .venv/bin/python bench/gateway.py --rates 400,800 --workers 1,2 --soak 100000 --json
"""

import argparse
import asyncio
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpload
import pause_probe

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BODY: dict[str, Any] = {
    "model": "stub",
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 16,
}
LITELLM_KEY = "sk-litellm-bench-master-key"
UNLIMITED = ["--rpm", "10000000", "--tpm", "1000000000"]  # the token's own limits never refuse here


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[Any], timeout: float = 120) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with status {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listened on port {port} within {timeout} s")


@dataclass
class Path_:
    """One way to the stub: a port, the request's headers, and the server process if it is measured."""

    name: str
    port: int
    headers: dict[str, str] = field(default_factory=dict)
    pid: int | None = None  # probed: a chatgate or bare-relay process
    master: str | None = None  # chatgate's master key: its /metrics is read around each run


def fastpath_counters(port: int, master: str) -> dict[str, float]:
    """chatgate's ``chatgate_fastpath_*`` counters from its ``/metrics`` (none in older trees)."""
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {master}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            text = answer.read().decode()
    except OSError:
        return {}
    counters = {}
    for line in text.splitlines():
        if line.startswith("chatgate_fastpath_"):
            name, _, value = line.rpartition(" ")
            counters[name] = float(value)
    return counters


# The fast path's queries by name: "write" is the grouped reservations and settlements (since they
# share a transaction); "reserve" and "settle" are their names in trees from before.
QUERIES = ("token", "write", "reserve", "settle")


def fastpath_summary(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """A run's fast-path queries: how many waited for the lock, and the mean time of each way."""
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    out: dict[str, Any] = {}
    for query in QUERIES:
        for way in ("inline", "waited"):
            label = f'{{query="{query}",way="{way}"}}'
            count = delta.get(f"chatgate_fastpath_queries_total{label}", 0.0)
            seconds = delta.get(f"chatgate_fastpath_seconds_total{label}", 0.0)
            out[f"{query}_{way}"] = int(count)
            out[f"{query}_{way}_ms"] = round(seconds / count * 1000, 3) if count else 0.0
    out["checkpoints"] = int(delta.get('chatgate_fastpath_checkpoints_total{restarted="yes"}', 0.0))
    out["checkpoints_unrestarted"] = int(
        delta.get('chatgate_fastpath_checkpoints_total{restarted="no"}', 0.0)
    )
    out["wal_mib"] = round(after.get("chatgate_fastpath_wal_bytes", 0.0) / 2**20, 1)  # at the end
    commits = delta.get("chatgate_fastpath_commits_total", 0.0)
    if commits:
        written = delta.get("chatgate_fastpath_settlements_total", 0.0)
        written += delta.get("chatgate_fastpath_reservations_total", 0.0)
        out["writes_a_commit"] = round(written / commits, 2)
    return out


@contextlib.contextmanager
def running(command: list[str], env: dict[str, str], port: int, logfile: Path) -> Iterator[int]:
    with logfile.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process)
        if "--workers" in command:  # the port listens before every worker has started
            time.sleep(3)
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def export_source(ref: str, into: Path) -> Path:
    """The ref's ``src`` tree, exported from this repository (no checkout, no network)."""
    archive = subprocess.run(["git", "archive", ref, "src"], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def pinned(cpus: str, command: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *command] if shutil.which("taskset") else command


def ensure_litellm(venv: Path) -> Path:
    """LiteLLM's proxy in a virtualenv of its own (its pinned dependencies stay out of ours)."""
    binary = venv / "bin" / "litellm"
    if not binary.exists():
        log(f"installing litellm[proxy] into {venv} (first run only)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--progress-bar", "on", "litellm[proxy]"], check=True
        )
    return binary


def litellm_command(binary: Path, workdir: Path, stub_port: int, port: int) -> list[str]:
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: stub\n"
        "    litellm_params:\n"
        "      model: openai/stub\n"
        f"      api_base: http://127.0.0.1:{stub_port}/v1\n"
        "      api_key: sk-stub\n"
        f"general_settings:\n  master_key: {LITELLM_KEY}\n"
    )
    return [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]


def chatgate_env(workdir: Path, stub_port: int, args: argparse.Namespace) -> dict[str, str]:
    catalogue = workdir / "catalogue.yaml"
    catalogue.write_text(
        "models:\n"
        "  - name: stub\n"
        f"    deployment: {{kind: openai_compatible, base_url: 'http://127.0.0.1:{stub_port}/v1', model: stub}}\n"
    )
    env = {
        **os.environ,
        "CHATGATE_API_KEY": "bench-master-key-0123456789",
        "CHATGATE_DATA_DIR": str(workdir / "data"),
        "CHATGATE_CATALOGUE": str(catalogue),
        "CHATGATE_FREE_CREDITS": str(10**12),
        "CHATGATE_LOG_LEVEL": "warning",
        # The user's own limits (across its tokens) far above the load, so they are checked, not hit.
        "CHATGATE_DEFAULT_RPM": "10000000",
        "CHATGATE_DEFAULT_TPM": "2000000000",
        "CHATGATE_DEFAULT_CONCURRENCY": "100000",
    }
    if args.database_url:
        env["CHATGATE_DATABASE_URL"] = args.database_url
    if args.redis_url:
        env["CHATGATE_REDIS_URL"] = args.redis_url
    return env


def probed(env: dict[str, str], probes: Path) -> dict[str, str]:
    """The environment that loads the pause probe into a process and every worker it starts."""
    path = [str(ROOT / "bench" / "probe"), env.get("PYTHONPATH", "")]
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in path if p), "CHATGATE_BENCH_PROBE": str(probes)}


def make_token(env: dict[str, str]) -> str:
    for command in (["migrate"], ["keys", "create", "--user", "bench@example.com", *UNLIMITED]):
        done = subprocess.run([PYTHON, "-m", "chatgate", *command], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"chatgate {command[0]} failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


async def measure(args: argparse.Namespace, paths: list[Path_], probes: Path) -> dict[str, Any]:
    def client(path: Path_, stream: bool) -> httpload.Client:
        body = {**BODY, "stream": True} if stream else BODY
        return httpload.Client(path.port, "/v1/chat/completions", path.headers, json.dumps(body).encode())

    modes = [("plain", rate) for rate in args.rates] + [("stream", rate) for rate in args.stream_rates]
    log("warm-up")
    for path in paths:
        if path.master:  # a route's first request builds its state (40 ms): not inside a run
            fastpath_counters(path.port, path.master)
        for stream in (False, True):
            warm = client(path, stream)
            await httpload.open_loop("warm-up", "warm-up", warm, 100, 2)
            warm.close()
    runs: list[httpload.Run] = []
    for mode, rate in modes:
        for path in paths:
            log(
                f"{path.name}: {rate:g} {'streams' if mode == 'stream' else 'requests'}/s for {args.seconds:g} s"
            )
            each = client(path, mode == "stream")
            if path.pid:  # the probe starts afresh: its next report covers this run alone
                pause_probe.read_probes(probes, pause_probe.signal_probes(probes, path.pid))
            counted = fastpath_counters(path.port, path.master) if path.master else {}
            await asyncio.sleep(0.2)
            run = await httpload.open_loop(path.name, mode, each, rate, args.seconds)
            each.close()
            if counted:
                run.fastpath = fastpath_summary(counted, fastpath_counters(path.port, path.master or ""))
            if path.pid:
                asked = pause_probe.signal_probes(probes, path.pid)
                run.probe = pause_probe.summarise(pause_probe.read_probes(probes, asked))
                if run.probe:  # CPU a request (or stream): what one core can sustain, whatever the load
                    run.probe["cpu_ms_each"] = round(run.probe["cpu_ms"] / run.requests, 3)
            runs.append(run)
    throughput: dict[str, Any] = {}
    if args.throughput_seconds > 0:
        for path in paths:
            log(
                f"{path.name}: max throughput, {args.connections} connections for {args.throughput_seconds:g} s"
            )
            each = client(path, False)
            rps, errors = await httpload.closed_loop(each, args.connections, args.throughput_seconds)
            each.close()
            throughput[path.name] = {"requests_per_s": rps, "errors": errors}
    soak = await _soak(args, paths, probes, client) if args.soak else None
    return {
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "litellm_venv")},
        "load": os.getloadavg(),
        "runs": [asdict(r) for r in runs],
        "added_ms": added(runs),
        "max_throughput": throughput,
        "soak": soak,
    }


async def _soak(args: argparse.Namespace, paths: list[Path_], probes: Path, client: Any) -> dict[str, Any]:
    """RSS of the one-worker chatgate every 10,000 requests over ``args.soak`` requests."""
    path = next(p for p in paths if p.name == "chatgate")
    assert path.pid is not None
    each = client(path, False)
    rss = [pause_probe.rss_mib(path.pid)]
    errors, sent, started = 0, 0, time.monotonic()
    while sent < args.soak:
        batch = min(10_000, args.soak - sent)
        errors += await httpload.count_loop(each, 8, batch)
        sent += batch
        rss.append(pause_probe.rss_mib(path.pid))
        log(f"soak: {sent} requests, RSS {rss[-1]} MiB")
    each.close()
    return {
        "requests": sent,
        "errors": errors,
        "seconds": round(time.monotonic() - started, 1),
        "rss_mib": rss,
    }


def added(runs: list[httpload.Run]) -> list[dict[str, Any]]:
    """Each path's latency over the direct path's at the same mode and rate."""
    out = []
    for run in runs:
        if run.name == "direct":
            continue
        base = next(r for r in runs if r.name == "direct" and r.mode == run.mode and r.rate == run.rate)
        out.append(
            {
                "path": run.name,
                "mode": run.mode,
                "rate": run.rate,
                "p50": round(run.p50_ms - base.p50_ms, 3),
                "p99": round(run.p99_ms - base.p99_ms, 3),
                "longest_stall_ms": run.probe.get("longest_stall_ms"),
            }
        )
    return out


def print_report(report: dict[str, Any]) -> None:
    load = ", ".join(f"{x:.2f}" for x in report["load"])
    print(f"load average at the end: {load}")
    print(
        "(ms; lag: the client's own lateness at worst; stall: the longest event-loop stall, wall clock;"
        " busy: the most CPU the loop spent between two wake-ups; gc2: full collections and the longest,"
        " in CPU ms; cpu: the server's CPU ms a request)"
    )
    head = f"{'path':<18}{'mode':<7}{'rate':>7}{'reqs':>7}{'err':>5}{'p50':>9}{'p90':>9}{'p99':>9}"
    head += (
        f"{'p99.9':>9}{'max':>9}{'lag':>8}{'stall':>8}{'busy':>7}{'gc2':>4}{'gc2 ms':>7}{'cpu':>6}{'RSS':>7}"
    )
    print(head)
    for r in report["runs"]:
        probe = r["probe"]
        line = f"{r['name']:<18}{r['mode']:<7}{r['rate']:>5g}/s{r['requests']:>7}{r['errors']:>5}"
        line += "".join(f"{r[k]:>9.2f}" for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"))
        line += f"{r['send_lag_max_ms']:>8.1f}"
        if probe:
            line += f"{probe['longest_stall_ms']:>8.2f}{probe['longest_busy_ms']:>7.2f}{probe['gc_gen2']:>4}"
            line += (
                f"{probe['gc_gen2_longest_cpu_ms']:>7.2f}{probe['cpu_ms_each']:>6.2f}{probe['rss_mib']:>7.1f}"
            )
        print(line)
    fast = [r for r in report["runs"] if r.get("fastpath")]
    if fast:
        print(
            "fast path (SQLite): queries at once / tried again on the loop until the lock was free, mean ms each"
        )
        for r in fast:
            f = r["fastpath"]
            parts = [
                f"{q} {f[q + '_inline']}/{f[q + '_waited']} ({f[q + '_inline_ms']:.2f}/{f[q + '_waited_ms']:.2f})"
                for q in QUERIES
                if f[q + "_inline"] or f[q + "_waited"]
            ]
            group = f", {f['writes_a_commit']} writes a commit" if "writes_a_commit" in f else ""
            group += f"; checkpoints {f['checkpoints']} rewound, {f['checkpoints_unrestarted']} not"
            group += f"; WAL {f['wal_mib']} MiB"
            print(f"  {r['name']:<18}{r['mode']:<7}{r['rate']:>6g}/s  " + ", ".join(parts) + group)
    print("added over direct (ms):")
    for a in report["added_ms"]:
        stall = f", longest stall {a['longest_stall_ms']:.2f}" if a["longest_stall_ms"] is not None else ""
        print(
            f"  {a['path']:<18}{a['mode']:<7}{a['rate']:>6g}/s  p50 {a['p50']:+.2f}  p99 {a['p99']:+.2f}{stall}"
        )
    if report["max_throughput"]:
        parts = [f"{name} {t['requests_per_s']} req/s" for name, t in report["max_throughput"].items()]
        print(f"max throughput ({report['config']['connections']} connections): " + ", ".join(parts))
    if report["soak"]:
        soak = report["soak"]
        print(
            f"soak: {soak['requests']} requests in {soak['seconds']} s, {soak['errors']} errors; "
            f"RSS every 10,000 (MiB): {soak['rss_mib']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    rates = lambda v: [float(x) for x in v.split(",") if x]  # noqa: E731
    parser.add_argument(
        "--rates", type=rates, default=[50.0, 150.0, 400.0, 800.0], help="requests/s, comma-separated"
    )
    parser.add_argument("--stream-rates", type=rates, default=[100.0, 300.0], help="streams/s ('' for none)")
    parser.add_argument("--seconds", type=float, default=10, help="duration of each fixed-rate run")
    parser.add_argument("--workers", type=lambda v: [int(x) for x in v.split(",")], default=[1])
    parser.add_argument("--connections", type=int, default=16, help="connections for the max-throughput run")
    parser.add_argument(
        "--throughput-seconds", type=float, default=5, help="0 leaves the closed-loop run out"
    )
    parser.add_argument("--soak", type=int, default=0, help="requests through chatgate, reading its RSS")
    parser.add_argument("--server-cpu", default="0", help="the core chatgate and the bare relay run on")
    parser.add_argument("--client-cpu", default="1", help="the core of this load generator and the stub")
    parser.add_argument("--database-url", help="default: SQLite in a temporary directory")
    parser.add_argument("--redis-url", help="share rate limits through Redis")
    parser.add_argument("--no-bare", action="store_true", help="leave the bare relay out")
    parser.add_argument(
        "--books", action="store_true", help="add the bare relay that also writes the money path's books"
    )
    parser.add_argument("--no-freeze", action="store_true", help="add chatgate without gc.freeze()")
    parser.add_argument(
        "--before",
        help="add chatgate as of these git refs (comma-separated; each one's src exported), one worker each",
    )
    parser.add_argument("--litellm", action="store_true", help="add LiteLLM's proxy")
    parser.add_argument("--litellm-venv", type=Path, default=ROOT / ".venv-litellm")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {int(args.client_cpu)})
    with tempfile.TemporaryDirectory(prefix="chatgate-gateway-bench-") as tmp:
        workdir = Path(tmp)
        probes = workdir / "probes"
        probes.mkdir()
        stub_port = free_port()
        env = chatgate_env(workdir, stub_port, args)
        token = make_token(env)
        headers = {"Authorization": f"Bearer {token}"}
        paths = [Path_("direct", stub_port)]
        with contextlib.ExitStack() as stack:
            stub = pinned(
                args.client_cpu, [PYTHON, str(ROOT / "bench" / "stub_upstream.py"), "--port", str(stub_port)]
            )
            stack.enter_context(running(stub, dict(os.environ), stub_port, workdir / "stub.log"))
            for workers in args.workers:
                port = free_port()
                command = [PYTHON, "-m", "chatgate", "serve", "--port", str(port)]
                cpus = args.server_cpu
                if workers > 1:
                    command += ["--workers", str(workers)]
                    cpus = f"{args.server_cpu},{args.client_cpu}"
                name = "chatgate" if workers == 1 else f"chatgate-w{workers}"
                logfile = workdir / f"{name}.log"
                pid = stack.enter_context(running(pinned(cpus, command), probed(env, probes), port, logfile))
                paths.append(Path_(name, port, headers, pid, master=env["CHATGATE_API_KEY"]))
            for i, ref in enumerate(args.before.split(",") if args.before else []):
                source = export_source(ref, workdir / f"before{i}")
                before = chatgate_env(workdir / f"before{i}", stub_port, args)
                before["PYTHONPATH"] = str(source)
                before_token = make_token(before)
                port = free_port()
                command = pinned(args.server_cpu, [PYTHON, "-m", "chatgate", "serve", "--port", str(port)])
                pid = stack.enter_context(
                    running(command, probed(before, probes), port, workdir / f"before{i}.log")
                )
                name = f"chatgate@{ref}"[:18]
                headers_before = {"Authorization": f"Bearer {before_token}"}
                paths.append(Path_(name, port, headers_before, pid, master=before["CHATGATE_API_KEY"]))
            if args.no_freeze:
                port = free_port()
                command = pinned(args.server_cpu, [PYTHON, "-m", "chatgate", "serve", "--port", str(port)])
                unfrozen = {**probed(env, probes), "CHATGATE_BENCH_NO_FREEZE": "1"}
                pid = stack.enter_context(running(command, unfrozen, port, workdir / "nofreeze.log"))
                paths.append(Path_("chatgate-nofreeze", port, headers, pid))

            def bare_relay(name: str, *more: str) -> None:
                port = free_port()
                bare = [PYTHON, str(ROOT / "bench" / "bare_relay.py"), "--port", str(port)]
                bare += ["--upstream", f"http://127.0.0.1:{stub_port}", *more]
                bare_env = probed(dict(os.environ), probes)
                log_file = workdir / f"{name.replace('+', '-')}.log"
                pid = stack.enter_context(running(pinned(args.server_cpu, bare), bare_env, port, log_file))
                paths.append(Path_(name, port, {}, pid))

            if not args.no_bare:
                bare_relay("bare")
            if args.books:
                (workdir / "books").mkdir()
                make_token(chatgate_env(workdir / "books", stub_port, args))
                bare_relay("bare+books", "--books", str(workdir / "books" / "data" / "chatgate.db"))
            if args.litellm:
                binary = ensure_litellm(args.litellm_venv)
                port = free_port()
                command = pinned(args.server_cpu, litellm_command(binary, workdir, stub_port, port))
                quiet = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
                stack.enter_context(running(command, quiet, port, workdir / "litellm.log"))
                paths.append(Path_("litellm", port, {"Authorization": f"Bearer {LITELLM_KEY}"}))
            report = _run(measure(args, paths, probes))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


def _run(work: Any) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(work)
    return uvloop.run(work)


if __name__ == "__main__":
    raise SystemExit(main())
