"""Where a relayed request's CPU goes inside chatgate: each step's thread CPU, one request at a time.

chatgate runs pinned to one core with a user's token and SQLite, in front of the stub upstream
(``bench/stub_upstream.py``), as in ``bench/gateway.py``; one connection sends requests back to
back (closed loop), so the server only ever works on one request, and the CPU its event-loop
thread spends inside a step (``time.thread_time``, which leaves out time spent waiting) is that
step's alone. The steps are the route's own functions, wrapped at start-up by this module's
``install`` (loaded through ``bench/probe/sitecustomize.py`` with ``CHATGATE_BENCH_BREAKDOWN``);
nothing in chatgate knows of it. Steps nest (``start`` holds ``reserve`` and the upstream call), and
a step that awaits counts what the loop ran for the same request meanwhile (the group-commit
writer, the upstream client's callbacks), so read the table as inclusive times per request, beside
the process's whole CPU a request (all threads, the server's parsing and writing included). The
layers around the route are left out: the answer's last byte lets the client send its next request,
which the loop starts before those layers have returned, so their time would hold the next one's.

    .venv/bin/python bench/breakdown.py --seconds 10
"""

import argparse
import asyncio
import functools
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# (module, owner in it or "" for the module itself, attribute, label): the hot route's steps.
STEPS = [
    ("chatgate.api.chat", "", "create_chat_completion", "route"),
    ("chatgate.services.auth", "AuthService", "authenticate", "  authenticate"),
    ("chatgate.storage.fastpath", "SqliteFastPath", "token", "    token lookup (SQLite)"),
    ("chatgate.api.body", "", "parse", "  parse the body"),
    ("chatgate.services.chat", "ChatService", "complete", "  complete"),
    ("chatgate.services.chat", "ChatService", "start", "    start"),
    ("chatgate.services.chat", "ChatService", "plan", "      plan"),
    ("chatgate.services.metering", "Metering", "_admit", "      admit: limits, reserve"),
    ("chatgate.services.metering", "Metering", "_reserve", "        reserve"),
    ("chatgate.providers.http1", "Client", "request", "      upstream call: sent, its head read"),
    ("chatgate.providers.http1", "Response", "read", "      upstream call: its body read"),
    ("chatgate.services.metering", "Metering", "_settle", "    settle"),
    ("chatgate.services.metering", "Meter", "close", "    close"),
    ("chatgate.protocol.responses", "ChatCompletion", "model_dump_json", "    the answer to JSON"),
    ("starlette.responses", "Response", "__call__", "  send the answer"),
    ("chatgate.storage.fastpath", "GroupCommit", "submit", "group commit, each submit"),
    ("chatgate.storage.fastpath", "", "_write_group", "  its SQL: BEGIN ... COMMIT"),
]
# Where a step is imported by name into another module, that name is rebound too.
ALIASES = {("chatgate.api.body", "parse"): ["chatgate.api.chat"]}


def install(out: str) -> None:
    """Wrap every step to add up its thread CPU; write the totals to ``out`` when the process ends."""
    import atexit
    import importlib

    totals: dict[str, list[int]] = {}

    def timed(function: Any, label: str) -> Any:
        entry = totals.setdefault(label, [0, 0])
        clock = time.thread_time_ns
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def step(*args: Any, **kwargs: Any) -> Any:
                began = clock()
                try:
                    return await function(*args, **kwargs)
                finally:
                    entry[0] += clock() - began
                    entry[1] += 1

            return step

        @functools.wraps(function)
        def sync_step(*args: Any, **kwargs: Any) -> Any:
            began = clock()
            try:
                return function(*args, **kwargs)
            finally:
                entry[0] += clock() - began
                entry[1] += 1

        return sync_step

    for module_name, owner_name, attribute, label in STEPS:
        module = importlib.import_module(module_name)
        owner = getattr(module, owner_name) if owner_name else module
        wrapped = timed(getattr(owner, attribute), label)
        setattr(owner, attribute, wrapped)
        for alias in ALIASES.get((module_name, attribute), []):
            setattr(importlib.import_module(alias), attribute, wrapped)

    def write() -> None:
        Path(out).write_text(json.dumps(totals))

    atexit.register(write)


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().split()
    return int(fields[13]) + int(fields[14])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--client-cpu", default="1")
    args = parser.parse_args()

    import gateway
    import httpload

    os.sched_setaffinity(0, {int(args.client_cpu)})
    with tempfile.TemporaryDirectory(prefix="chatgate-breakdown-") as tmp:
        workdir = Path(tmp)
        stub_port, port = gateway.free_port(), gateway.free_port()
        options = argparse.Namespace(database_url=None, redis_url=None)
        env = gateway.chatgate_env(workdir, stub_port, options)
        token = gateway.make_token(env)
        out = workdir / "breakdown.json"
        hooked = {
            **env,
            "PYTHONPATH": os.pathsep.join([str(gateway.ROOT / "bench" / "probe"), env.get("PYTHONPATH", "")]),
            "CHATGATE_BENCH_BREAKDOWN": str(out),
        }
        stub = gateway.pinned(
            args.client_cpu,
            [gateway.PYTHON, str(gateway.ROOT / "bench" / "stub_upstream.py"), "--port", str(stub_port)],
        )
        serve = gateway.pinned(
            args.server_cpu, [gateway.PYTHON, "-m", "chatgate", "serve", "--port", str(port)]
        )
        with gateway.running(stub, dict(os.environ), stub_port, workdir / "stub.log"):
            server = subprocess.Popen(serve, env=hooked, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                gateway.wait_for_port(port, server)
                body = json.dumps(gateway.BODY).encode()
                headers = {"Authorization": f"Bearer {token}"}

                async def measure() -> tuple[float, int, int]:
                    client = httpload.Client(port, "/v1/chat/completions", headers, body)
                    await httpload.closed_loop(client, 1, 2)  # warm-up
                    before = cpu_ticks(server.pid)
                    rate, errors = await httpload.closed_loop(client, 1, args.seconds)
                    ticks = cpu_ticks(server.pid) - before
                    client.close()
                    return rate, errors, ticks

                rate, errors, ticks = asyncio.run(measure())
            finally:
                server.send_signal(2)  # uvicorn's graceful stop: the totals are written at exit
                server.wait(timeout=60)
        totals = json.loads(out.read_text())
    requests = totals[STEPS[0][3]][1]
    cpu_ms = ticks * 1000 / os.sysconf("SC_CLK_TCK") / (rate * args.seconds)
    print(
        f"{rate:.0f} requests/s one at a time, {errors} errors; the process's CPU {cpu_ms:.3f} ms a request"
    )
    print(f"{'step (inclusive)':<36}{'us a request':>13}{'calls a request':>17}")
    for _, _, _, label in STEPS:
        spent, calls = totals[label]
        print(f"{label:<36}{spent / requests / 1000:>13.1f}{calls / requests:>17.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
