"""What an abusive client costs the server: before (a git ref, main by default) and after (this tree),
side by side in one run.

1. **Work before admission.** One request from a token with 1 credit: 8 ``image_url`` parts, each a
   6000x6000 white PNG as a data URL (about 1 MB in all), to a text-only model (whose images are
   described in text by the server's image analysis). The server's CPU seconds, its peak RSS
   growth, the answer's status and how long it took.
2. **Eight of them at once**, while another token sends a normal request every 100 ms: the same
   figures, and the slowest of those normal requests meanwhile.
3. **Sign-up burst.** 30 ``POST /api/signup`` from one address: what the server answered.
4. **Added latency.** ``bench/gateway.py``'s lean client at a fixed rate, straight to the stub
   upstream and through each server, interleaved over ``--repeats`` rounds: what each server adds
   to a normal request at p50 and p99.

Each side is a ``chatgate serve`` against ``bench/stub_upstream.py``, SQLite in a temporary
directory. The "before" side runs the ref's ``src`` (exported with ``git archive``) on this
virtualenv. Its server gets an address-space cap (``--before-memory``, 8 GiB by default): a
server that decodes eight 6000x6000 images at once needs more than a shared machine should give,
so the cap turns that into the server failing, which the report shows.

Run from the repository root on an otherwise quiet machine::

    .venv/bin/python bench/abuse.py                    # main against this tree
    .venv/bin/python bench/abuse.py --before cc927d2 --repeats 5 --seconds 10
"""

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway import BODY, export_source, free_port, log
from httpload import Client, open_loop

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
MASTER = "bench-master-key-0123456789"
TICKS = os.sysconf("SC_CLK_TCK")
MiB = 2**20


def white_png_url(side: int = 6000) -> str:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (side, side), "white").save(out, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def image_request(url: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "What do these show?"}]
    parts += [{"type": "image_url", "image_url": {"url": url}}] * 8
    return {"model": "stub", "messages": [{"role": "user", "content": parts}], "max_tokens": 16}


@dataclass
class Side:
    """One chatgate server: its name, process, port and two tokens (1 credit; plenty)."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    poor: str
    rich: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (the peak), in bytes."""
        found = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) * 1024
        return found

    def reset_peak(self) -> None:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS

    def alive(self) -> bool:
        return self.process.poll() is None


def limit_memory(limit: int | None) -> Callable[[], None] | None:
    if limit is None:
        return None

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def new_database(server_url: str, name: str) -> str:
    """A fresh database on the PostgreSQL server at ``server_url``; its SQLAlchemy URL."""
    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(server_url.replace("postgresql+asyncpg", "postgresql") + "/postgres")
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return f"{server_url}/{name}"


@contextlib.contextmanager
def chatgate(
    name: str,
    workdir: Path,
    stub_port: int,
    source: Path | None,
    memory: int | None,
    database: str | None = None,
) -> Iterator[Side]:
    workdir.mkdir(parents=True)
    catalogue = workdir / "catalogue.yaml"
    catalogue.write_text(
        "models:\n  - name: stub\n"
        f"    deployment: {{kind: openai_compatible, base_url: 'http://127.0.0.1:{stub_port}/v1', model: stub}}\n"
    )
    env = {
        **os.environ,
        "CHATGATE_API_KEY": MASTER,
        "CHATGATE_DATA_DIR": str(workdir / "data"),
        "CHATGATE_CATALOGUE": str(catalogue),
        "CHATGATE_FREE_CREDITS": str(10**12),
        "CHATGATE_LOG_LEVEL": "warning",
    }
    if source is not None:
        env["PYTHONPATH"] = str(source)
    if database is not None:
        env["CHATGATE_DATABASE_URL"] = database

    def cli(*args: str) -> str:
        done = subprocess.run(
            [PYTHON, "-m", "chatgate", *args], env=env, check=True, capture_output=True, text=True
        )
        return done.stdout.strip().splitlines()[-1]

    cli("migrate")
    poor = cli("keys", "create", "--user", "poor@example.com", "--quota", "1")
    rich = cli("keys", "create", "--user", "rich@example.com", "--rpm", "10000000", "--tpm", "1000000000")
    port = free_port()
    with (workdir / "server.log").open("w") as out:
        process = subprocess.Popen(
            [PYTHON, "-m", "chatgate", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=limit_memory(memory),
        )
    side = Side(name, process, port, poor, rich)
    try:
        deadline = time.monotonic() + 120
        while not _ready(side):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {(workdir / 'server.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield side
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _ready(side: Side) -> bool:
    try:
        return httpx.get(side.url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def _post(http: httpx.AsyncClient, key: str, body: dict[str, Any]) -> tuple[str, float]:
    started = time.monotonic()
    try:
        response = await http.post(
            "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
        )
        outcome = str(response.status_code)
        if response.status_code >= 400:
            outcome += " " + str(response.json().get("error", {}).get("code"))
    except httpx.HTTPError as exc:
        outcome = type(exc).__name__
    return outcome, time.monotonic() - started


async def abusive(side: Side, body: dict[str, Any], at_once: int) -> dict[str, Any]:
    """``at_once`` copies of the image request; a normal request every 100 ms meanwhile."""
    side.reset_peak()
    before_rss, before_cpu = side.memory()["VmRSS"], side.cpu_seconds()
    normal: list[float] = []
    failed: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=side.url, timeout=600) as http:
        burst = asyncio.gather(*(_post(http, side.poor, body) for _ in range(at_once)))
        task = asyncio.ensure_future(burst)
        while not task.done():
            outcome, seconds = await _post(http, side.rich, BODY)
            normal.append(seconds)
            if not outcome.startswith("200"):
                failed[outcome] += 1
            await asyncio.sleep(0.1)
        answers = await task
    after_cpu = side.cpu_seconds() if side.alive() else float("nan")
    peak = side.memory()["VmHWM"] if side.alive() else 0
    return {
        "outcomes": dict(Counter(outcome for outcome, _ in answers)),
        "slowest_answer_s": round(max(seconds for _, seconds in answers), 3),
        "cpu_s": round(after_cpu - before_cpu, 2),
        "peak_rss_growth_mib": round((peak - before_rss) / MiB, 1) if peak else None,
        "normal_requests": len(normal),
        "slowest_normal_s": round(max(normal), 3) if normal else None,
        "normal_failures": dict(failed),
        "server_alive": side.alive(),
    }


async def signup_burst(side: Side, count: int = 30) -> dict[str, int]:
    async with httpx.AsyncClient(base_url=side.url, timeout=60) as http:
        statuses: Counter[str] = Counter()
        for i in range(count):
            response = await http.post(
                "/api/signup",
                json={"email": f"burst{i}-{time.time_ns()}@example.com", "password": "burst burst burst"},
            )
            statuses[str(response.status_code)] += 1
    return dict(statuses)


async def added_latency(
    sides: list[Side], stub_port: int, rate: float, seconds: float, repeats: int
) -> dict[str, Any]:
    """bench/gateway.py's client: each side and the stub in turn, round after round."""
    payload = json.dumps(BODY).encode()
    clients = {"direct": Client(stub_port, "/v1/chat/completions", {}, payload)}
    for side in sides:
        clients[side.name] = Client(
            side.port, "/v1/chat/completions", {"Authorization": f"Bearer {side.rich}"}, payload
        )
    for client in clients.values():
        await open_loop("warm-up", "plain", client, rate, 2)
    rounds: list[dict[str, dict[str, float]]] = []
    by_name = {side.name: side for side in sides}
    for round_ in range(repeats):
        log(f"latency round {round_ + 1}/{repeats}")
        measured: dict[str, Any] = {}
        cpu_ms: dict[str, float] = {}
        for name, client in clients.items():
            server = by_name.get(name)
            cpu = server.cpu_seconds() if server is not None else 0.0
            measured[name] = await open_loop(name, "plain", client, rate, seconds)
            if server is not None:  # the server's CPU a request: the machine's load inflates it less
                cpu_ms[name] = (server.cpu_seconds() - cpu) * 1000 / measured[name].requests
        direct = measured["direct"]
        rounds.append(
            {
                side.name: {
                    "p50": round(measured[side.name].p50_ms - direct.p50_ms, 3),
                    "p99": round(measured[side.name].p99_ms - direct.p99_ms, 3),
                    "cpu_ms": round(cpu_ms[side.name], 3),
                    "errors": measured[side.name].errors,
                }
                for side in sides
            }
        )
    for client in clients.values():
        client.close()
    summary = {
        side.name: {
            q: {
                "median": round(statistics.median(r[side.name][q] for r in rounds), 3),
                "min": min(r[side.name][q] for r in rounds),
                "max": max(r[side.name][q] for r in rounds),
            }
            for q in ("p50", "p99", "cpu_ms")
        }
        for side in sides
    }
    return {"rate": rate, "seconds": seconds, "rounds": rounds, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", default="main", help="the git ref to compare against (default main)")
    parser.add_argument("--before-memory", type=int, default=8 * 2**30, help="its address-space cap, bytes")
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=10, help="each latency run")
    parser.add_argument("--repeats", type=int, default=3, help="latency rounds")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="a PostgreSQL server (postgresql+asyncpg://user@host:port) to put both sides' databases on"
        " (default: SQLite)",
    )
    parser.add_argument("--latency-only", action="store_true", help="only the added latency (4.)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    log("drawing the 6000x6000 white PNG")
    body = image_request(white_png_url())
    log(f"image request: {len(json.dumps(body)) / MiB:.2f} MiB")
    report: dict[str, Any] = {"config": vars(args), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="chatgate-abuse-bench-") as tmp:
        workdir = Path(tmp)
        source = export_source(args.before, workdir / "before-src")
        stub_port = free_port()
        stub = subprocess.Popen(
            [PYTHON, str(ROOT / "bench" / "stub_upstream.py"), "--port", str(stub_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            databases: dict[str, str | None] = {"before": None, "after": None}
            if args.postgres:
                stamp = time.strftime("%Y%m%d%H%M%S")
                databases = {side: new_database(args.postgres, f"abuse_{side}_{stamp}") for side in databases}
            with (
                chatgate("after", workdir / "after", stub_port, None, None, databases["after"]) as after,
                chatgate(
                    "before", workdir / "before", stub_port, source, args.before_memory, databases["before"]
                ) as before,
            ):
                sides = [before, after]
                if args.latency_only:
                    report["latency"] = asyncio.run(
                        added_latency(sides, stub_port, args.rate, args.seconds, args.repeats)
                    )
                    return finish(report, args)
                for side in sides:
                    log(f"{side.name}: one 1-credit image request")
                    report[f"{side.name}_one"] = asyncio.run(abusive(side, body, 1))
                report["latency"] = asyncio.run(
                    added_latency(sides, stub_port, args.rate, args.seconds, args.repeats)
                )
                for side in sides:
                    log(f"{side.name}: sign-up burst")
                    report[f"{side.name}_signups"] = asyncio.run(signup_burst(side))
                for side in reversed(sides):  # the one that may fall over last
                    log(f"{side.name}: eight 1-credit image requests at once")
                    report[f"{side.name}_eight"] = asyncio.run(abusive(side, body, 8))
        finally:
            stub.terminate()
            stub.wait()
    return finish(report, args)


def finish(report: dict[str, Any], args: argparse.Namespace) -> int:
    report["load_after"] = os.getloadavg()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


def print_report(report: dict[str, Any]) -> None:
    print(f"load average before {report['load_before'][0]:.2f}, after {report['load_after'][0]:.2f}")
    print(f"{'scenario':<34}{'before':>36}{'after':>36}")
    scenarios = (
        []
        if "before_one" not in report
        else [("one", "1-credit image request"), ("eight", "8 of them at once")]
    )
    for scenario, label in scenarios:
        before, after = report[f"before_{scenario}"], report[f"after_{scenario}"]
        for key in (
            "outcomes",
            "slowest_answer_s",
            "cpu_s",
            "peak_rss_growth_mib",
            "slowest_normal_s",
            "normal_failures",
            "server_alive",
        ):
            print(f"{label + ': ' + key:<34}{before[key]!s:>36}{after[key]!s:>36}")
    if "before_signups" in report:
        print(
            f"{'sign-up burst (30 from one address)':<34}{report['before_signups']!s:>36}{report['after_signups']!s:>36}"
        )
    latency = report["latency"]
    for q in ("p50", "p99", "cpu_ms"):
        cells = []
        for name in ("before", "after"):
            s = latency["summary"][name][q]
            cells.append(f"{s['median']:.3f} ms ({s['min']:.3f}..{s['max']:.3f})")
        label = ("server CPU a request" if q == "cpu_ms" else "added " + q) + f" at {latency['rate']:g}/s"
        print(f"{label:<34}{cells[0]:>36}{cells[1]:>36}")
    for number, round_ in enumerate(latency["rounds"], start=1):
        print(
            f"  round {number}: "
            + ", ".join(
                f"{name} p50 +{r['p50']:.2f} p99 +{r['p99']:.2f} ms, CPU {r['cpu_ms']:.3f} ms"
                for name, r in round_.items()
            )
        )


if __name__ == "__main__":
    raise SystemExit(main())
