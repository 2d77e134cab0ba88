"""What one relayed call costs the event loop, by HTTP client: chatgate's ``http1.Client``, aiohttp, httpx.

The stub upstream (``bench/stub_upstream.py``) runs pinned to one core; this script, pinned to the
other, sends one non-streamed chat request at a time on a kept connection and reads the whole
answer (JSON-decoded, as the relay does), and reports the thread CPU each call took: everything the
event loop's thread spends on the call, system calls included. Each client is set up as the relay
sets it up (aiohttp: the session ``RelaySession`` opened for chat before, with its per-call timeout
object; httpx: one ``AsyncClient``). The clients take turns, ``--rounds`` times, so a slow stretch of
the machine falls on all of them; the table gives each one's median and range over the rounds.

    .venv/bin/python bench/relay_client.py
    .venv/bin/python bench/relay_client.py --calls 5000 --rounds 5
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import uvloop

import gateway
from chatgate.providers.http1 import Client, encode_headers

BODY = json.dumps(
    {"model": "stub", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
).encode()
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
Call = Callable[[], Awaitable[Any]]


async def http1_client(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    client, headers = Client(), encode_headers(HEADERS)

    async def call() -> Any:
        response = await client.request(
            "POST", url, body=BODY, headers=headers, connect_timeout=10.0, read_timeout=120.0
        )
        try:
            return json.loads(await response.read())
        finally:
            response.release()

    return call, client.close


async def aiohttp_client(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    connector = aiohttp.TCPConnector(limit=1000, keepalive_timeout=60.0, ttl_dns_cache=60)
    session = aiohttp.ClientSession(
        connector=connector, trust_env=False, read_bufsize=2**20, auto_decompress=True
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=120.0)

    async def call() -> Any:
        response = await session.post(url, data=BODY, headers=HEADERS, timeout=timeout)
        try:
            return json.loads(await response.read())
        finally:
            response.release()

    return call, session.close


async def httpx_client(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    client = httpx.AsyncClient(trust_env=False, timeout=120.0)

    async def call() -> Any:
        response = await client.post(url, content=BODY, headers=HEADERS)
        return response.json()

    return call, client.aclose


CLIENTS = {"http1 (chatgate)": http1_client, "aiohttp": aiohttp_client, "httpx": httpx_client}


async def measure(url: str, calls: int, rounds: int) -> dict[str, list[float]]:
    made = {name: await make(url) for name, make in CLIENTS.items()}
    results: dict[str, list[float]] = {name: [] for name in CLIENTS}
    try:
        for call, _ in made.values():  # each opens its connection and warms up
            for _ in range(300):
                await call()
        for _ in range(rounds):
            for name, (call, _) in made.items():
                started = time.thread_time()
                for _ in range(calls):
                    await call()
                results[name].append((time.thread_time() - started) / calls * 1e6)
    finally:
        for _, close in made.values():
            await close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per client per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu", default="0", help="the core of this script (the stub gets --stub-cpu)")
    parser.add_argument("--stub-cpu", default="1")
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(args.cpu)})
    port = gateway.free_port()
    stub = gateway.pinned(
        args.stub_cpu, [gateway.PYTHON, str(gateway.ROOT / "bench" / "stub_upstream.py"), "--port", str(port)]
    )
    with (
        tempfile.TemporaryDirectory(prefix="relay-client-") as tmp,
        gateway.running(stub, dict(os.environ), port, Path(tmp) / "stub.log"),
    ):
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        results = uvloop.run(measure(url, args.calls, args.rounds))
    print(
        f"thread CPU of one relayed call, us ({args.calls} calls a round, {args.rounds} rounds, taking turns)"
    )
    print(f"{'client':20s} {'median':>8s} {'range':>17s}")
    for name, values in results.items():
        print(f"{name:20s} {statistics.median(values):8.1f} {min(values):8.1f} - {max(values):6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
