"""What chatgate adds per request: the same load through chatgate and straight to the upstream, side by side.

Four paths carry the same load in one run: straight to the upstream, through chatgate, through
a bare relay (``bench/bare_relay.py``: the same server stack and upstream client as chatgate,
doing nothing but pass the bytes on, so what it adds is the floor for any gateway built this
way), and through LiteLLM's proxy (``litellm[proxy]``, the reference peer, installed by this
script into ``.venv-litellm`` when missing, configured with the same upstream and a master key;
without a database it does no per-key spend tracking, so it does less per request than chatgate
does).

The upstream is ``bench/stub_upstream.py``, which answers at once, so what the chatgate path adds
is chatgate's own work: authentication (a user's API token, looked up in the database), the rate
limiter, the credit reservation and settlement (two database transactions), the usage log, and
the relay. The database is SQLite by default; ``--database-url`` and ``--redis-url`` measure the
replica set-up (PostgreSQL, Redis).

Load is open-loop at fixed rates (default 50 and 200 requests/s; LiteLLM cannot sustain 200 on
this machine, so 50 shows its per-request overhead without a backlog): each request is sent at its scheduled
time whatever the others are doing, and its latency runs from that scheduled time to the end of
the response, so a backlog counts against the server instead of hiding. The client is a lean
keep-alive HTTP/1.1 client over asyncio sockets, so it spends little of the 2 CPUs itself. Then a
closed-loop run (N connections, each sending as fast as answers come back) gives the most
requests per second each path can take.

Run from the repository root on an otherwise idle machine::

    .venv/bin/python bench/gateway.py                     # 50 and 200 req/s for 15 s each, then max throughput
    .venv/bin/python bench/gateway.py --rates 100 --seconds 30 --no-litellm --json
"""

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BODY: dict[str, Any] = {
    "model": "stub",
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 16,
}


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


@contextlib.contextmanager
def running(command: list[str], env: dict[str, str], port: int, logfile: Path) -> Iterator[None]:
    with logfile.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


# ---------------------------------------------------------------------------------------------
# A lean HTTP/1.1 keep-alive client


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def exchange(self, raw: bytes) -> int:
        self.writer.write(raw)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("the server closed this keep-alive connection")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status


class Client:
    def __init__(self, port: int, path: str, headers: dict[str, str], body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.raw = (head + f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
        self.port = port
        self.idle: list[Connection] = []

    async def send(self) -> int:
        if self.idle:
            connection = self.idle.pop()
            try:
                status = await connection.exchange(self.raw)
            except (OSError, asyncio.IncompleteReadError):
                connection.writer.close()  # idle too long: the server let it go; use a fresh one
            else:
                self.idle.append(connection)
                return status
        connection = Connection(*await asyncio.open_connection("127.0.0.1", self.port))
        status = await connection.exchange(self.raw)
        self.idle.append(connection)
        return status

    def close(self) -> None:
        for connection in self.idle:
            connection.writer.close()


@dataclass
class FixedRate:
    path: str
    rate: float
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def fixed_rate(name: str, client: Client, rate: float, seconds: float) -> FixedRate:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    statuses: Counter[int] = Counter()
    failures: Counter[str] = Counter()

    async def one(scheduled: float) -> None:
        nonlocal errors
        try:
            status = await client.send()
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            status = 0  # the connection failed
            failures[f"{type(exc).__name__}: {exc}"[:120]] += 1
        statuses[status] += 1
        if status != 200:
            errors += 1
        latencies.append((loop.time() - scheduled) * 1000)

    total = int(rate * seconds)
    start = loop.time() + 0.05
    tasks = []
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    if errors:
        log(f"{name}: statuses {dict(statuses)}; connection failures {dict(failures)}")
    return FixedRate(
        name,
        rate,
        total,
        errors,
        round(statistics.median(latencies), 3),
        round(_percentile(latencies, 0.90), 3),
        round(_percentile(latencies, 0.99), 3),
        round(max(latencies), 3),
    )


async def max_throughput(client: Client, connections: int, seconds: float) -> tuple[float, int]:
    loop = asyncio.get_running_loop()
    done, errors = 0, 0
    end = loop.time() + seconds

    async def worker() -> None:
        nonlocal done, errors
        while loop.time() < end:
            try:
                ok = await client.send() == 200
            except (OSError, asyncio.IncompleteReadError, ValueError):
                ok = False
            if ok:
                done += 1
            else:
                errors += 1

    started = loop.time()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return round(done / (loop.time() - started), 1), errors


# ---------------------------------------------------------------------------------------------


LITELLM_KEY = "sk-litellm-bench-master-key"


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
    return [
        str(binary),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]


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
    }
    if args.database_url:
        env["CHATGATE_DATABASE_URL"] = args.database_url
    if args.redis_url:
        env["CHATGATE_REDIS_URL"] = args.redis_url
    return env


async def measure(args: argparse.Namespace, ports: dict[str, int], token: str) -> dict[str, Any]:
    clients = {"direct": Client(ports["direct"], "/v1/chat/completions", {}, BODY)}
    clients["chatgate"] = Client(
        ports["chatgate"], "/v1/chat/completions", {"Authorization": f"Bearer {token}"}, BODY
    )
    clients["bare"] = Client(ports["bare"], "/v1/chat/completions", {}, BODY)
    if "litellm" in ports:
        headers = {"Authorization": f"Bearer {LITELLM_KEY}"}
        clients["litellm"] = Client(ports["litellm"], "/v1/chat/completions", headers, BODY)
    log("warm-up")
    for client in clients.values():
        await fixed_rate("warm-up", client, min(args.rates), 2)
    results: list[FixedRate] = []
    for rate in args.rates:
        for name, client in clients.items():
            log(f"{name}: {rate:g} req/s for {args.seconds:g} s")
            results.append(await fixed_rate(name, client, rate, args.seconds))
    throughput: dict[str, Any] = {}
    for name, client in clients.items():
        log(f"{name}: max throughput, {args.connections} connections for {args.throughput_seconds:g} s")
        rps, errors = await max_throughput(client, args.connections, args.throughput_seconds)
        throughput[name] = {"requests_per_s": rps, "errors": errors}
    for client in clients.values():
        client.close()
    added: dict[str, dict[str, dict[str, float]]] = {}
    for rate in args.rates:
        at_rate = {r.path: r for r in results if r.rate == rate}
        direct = at_rate["direct"]
        added[f"{rate:g}"] = {
            name: {"p50": round(r.p50_ms - direct.p50_ms, 3), "p99": round(r.p99_ms - direct.p99_ms, 3)}
            for name, r in at_rate.items()
            if name != "direct"
        }
    return {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "fixed_rate": [asdict(r) for r in results],
        "added_ms": added,
        "max_throughput": throughput,
    }


def print_report(report: dict[str, Any]) -> None:
    print(
        f"{'path':<10}{'rate':>8}{'requests':>10}{'errors':>8}{'p50_ms':>9}{'p90_ms':>9}{'p99_ms':>9}{'max_ms':>9}"
    )
    for r in report["fixed_rate"]:
        print(
            f"{r['path']:<10}{r['rate']:>6g}/s{r['requests']:>10}{r['errors']:>8}"
            f"{r['p50_ms']:>9.2f}{r['p90_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['max_ms']:>9.2f}"
        )
    for rate, paths in report["added_ms"].items():
        for name, added in paths.items():
            print(f"at {rate}/s {name} adds: p50 {added['p50']:.2f} ms, p99 {added['p99']:.2f} ms")
        if "litellm" in paths:
            theirs = paths["litellm"]
            for name in ("chatgate", "bare"):
                for q in ("p50", "p99"):
                    if theirs[q] > 0:
                        ours = paths[name][q]
                        print(f"at {rate}/s {name} adds {ours / theirs[q]:.3f}x of what litellm adds at {q}")
    parts = [f"{name} {t['requests_per_s']} req/s" for name, t in report["max_throughput"].items()]
    print(f"max throughput ({report['config']['connections']} connections): " + ", ".join(parts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rates",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[50.0, 200.0],
        help="fixed request rates to run, comma-separated (default 50,200)",
    )
    parser.add_argument("--seconds", type=float, default=15, help="duration of each fixed-rate run")
    parser.add_argument("--connections", type=int, default=16, help="connections for the max-throughput run")
    parser.add_argument("--throughput-seconds", type=float, default=8)
    parser.add_argument("--database-url", help="default: SQLite in a temporary directory")
    parser.add_argument("--redis-url", help="share rate limits through Redis")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM's proxy out")
    parser.add_argument("--litellm-venv", type=Path, default=ROOT / ".venv-litellm")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="chatgate-gateway-bench-") as tmp:
        workdir = Path(tmp)
        stub_port, gate_port = free_port(), free_port()
        env = chatgate_env(workdir, stub_port, args)
        subprocess.run([PYTHON, "-m", "chatgate", "migrate"], env=env, check=True, capture_output=True)
        created = subprocess.run(
            [
                PYTHON,
                "-m",
                "chatgate",
                "keys",
                "create",
                "--user",
                "bench@example.com",
                "--rpm",
                "10000000",
                "--tpm",
                "1000000000",
            ],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        token = created.stdout.strip().splitlines()[-1]
        stub = [PYTHON, str(ROOT / "bench" / "stub_upstream.py"), "--port", str(stub_port)]
        gate = [PYTHON, "-m", "chatgate", "serve", "--port", str(gate_port)]
        ports = {"direct": stub_port, "chatgate": gate_port}
        with contextlib.ExitStack() as stack:
            stack.enter_context(running(stub, dict(os.environ), stub_port, workdir / "stub.log"))
            stack.enter_context(running(gate, env, gate_port, workdir / "chatgate.log"))
            ports["bare"] = free_port()
            bare = [PYTHON, str(ROOT / "bench" / "bare_relay.py"), "--port", str(ports["bare"])]
            bare += ["--upstream", f"http://127.0.0.1:{stub_port}"]
            stack.enter_context(running(bare, dict(os.environ), ports["bare"], workdir / "bare.log"))
            if not args.no_litellm:
                binary = ensure_litellm(args.litellm_venv)
                ports["litellm"] = free_port()
                command = litellm_command(binary, workdir, stub_port, ports["litellm"])
                quiet = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
                stack.enter_context(running(command, quiet, ports["litellm"], workdir / "litellm.log"))
            report = asyncio.run(measure(args, ports, token))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
