"""A lean HTTP/1.1 load generator for the gateway benchmark: open loop at a fixed rate, or closed loop.

Open loop: request ``i`` is sent at ``start + i / rate`` whatever the others are doing, each on an
idle keep-alive connection (a new one is opened when none is idle). Its latency runs from the
moment its bytes are written to the last byte of its answer; how late the send itself came
(``send_lag``) is kept apart, so a client that falls behind shows as lag, not as server time.
Streamed answers (``text/event-stream``, chunked or with a length) are read to their end; the first
byte's arrival is kept too. The client parses only what it must and runs on uvloop, so it spends
little CPU beside the servers it measures.
"""

import asyncio
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def exchange(self, raw: bytes) -> tuple[int, float, float]:
        """Send one request; its status, and when it was sent and when its first byte came."""
        sent = time.perf_counter()
        self.writer.write(raw)
        status_line = await self.reader.readline()
        first = time.perf_counter()
        if not status_line:
            raise ConnectionResetError("the server closed this keep-alive connection")
        status = int(status_line.split(b" ", 2)[1])
        length, chunked, close = -1, False, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)  # the chunk and its CRLF
                if size == 0:
                    break
        elif length >= 0:
            await self.reader.readexactly(length)
        if close:
            self.writer.close()
            raise _Closed(status, sent, first)
        return status, sent, first


class _Closed(Exception):
    """The answer came whole, but the server closed the connection after it."""

    def __init__(self, status: int, sent: float, first: float) -> None:
        self.result = (status, sent, first)


class Client:
    """Sends one prepared request again and again over a pool of keep-alive connections."""

    def __init__(self, port: int, path: str, headers: dict[str, str], payload: bytes) -> None:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.raw = (head + f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
        self.port = port
        self.idle: list[Connection] = []

    async def connect(self) -> Connection:
        return Connection(*await asyncio.open_connection("127.0.0.1", self.port))

    async def warm(self, connections: int) -> None:
        """Open connections ahead of a run, so its first requests don't pay for connecting."""
        opened = await asyncio.gather(*(self.connect() for _ in range(connections - len(self.idle))))
        self.idle.extend(opened)

    async def send(self) -> tuple[int, float, float, float]:
        """One request: status, latency (seconds from the send to the end), time to first byte, and the send time."""
        connection = self.idle.pop() if self.idle else await self.connect()
        try:
            status, sent, first = await connection.exchange(self.raw)
        except _Closed as closed:
            status, sent, first = closed.result
        except (OSError, asyncio.IncompleteReadError):
            connection.writer.close()  # a keep-alive connection the server let go: once more, afresh
            connection = await self.connect()
            status, sent, first = await connection.exchange(self.raw)
            self.idle.append(connection)
        else:
            self.idle.append(connection)
        end = time.perf_counter()
        return status, end - sent, first - sent, sent

    def close(self) -> None:
        for connection in self.idle:
            connection.writer.close()
        self.idle.clear()


@dataclass
class Run:
    name: str
    mode: str  # "plain" or "stream"
    rate: float
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    ttfb_p50_ms: float
    send_lag_max_ms: float  # how late the client itself sent a request, at worst
    probe: dict[str, Any] = field(default_factory=dict)
    fastpath: dict[str, Any] = field(default_factory=dict)  # chatgate's SQLite fast path in the run


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def open_loop(name: str, mode: str, client: Client, rate: float, seconds: float) -> Run:
    latencies: list[float] = []
    firsts: list[float] = []
    lags: list[float] = []
    statuses: Counter[int] = Counter()
    failures: Counter[str] = Counter()

    async def one(scheduled: float) -> None:
        try:
            status, latency, first, sent = await client.send()
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            failures[f"{type(exc).__name__}: {exc}"[:120]] += 1
            statuses[0] += 1
            return
        statuses[status] += 1
        latencies.append(latency * 1000)
        firsts.append(first * 1000)
        lags.append(max(0.0, sent - scheduled) * 1000)

    total = int(rate * seconds)
    await client.warm(max(4, int(rate / 100)))
    start = time.perf_counter() + 0.05  # perf_counter throughout: uvloop's loop.time() counts whole ms
    tasks = []
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    errors = total - statuses[200]
    if errors:
        print(f"[bench] {name}: statuses {dict(statuses)}; failures {dict(failures)}", flush=True)
    latencies = latencies or [0.0]
    return Run(
        name=name,
        mode=mode,
        rate=rate,
        requests=total,
        errors=errors,
        p50_ms=round(statistics.median(latencies), 3),
        p90_ms=round(percentile(latencies, 0.90), 3),
        p99_ms=round(percentile(latencies, 0.99), 3),
        p999_ms=round(percentile(latencies, 0.999), 3),
        max_ms=round(max(latencies), 3),
        ttfb_p50_ms=round(statistics.median(firsts or [0.0]), 3),
        send_lag_max_ms=round(max(lags or [0.0]), 3),
    )


async def closed_loop(client: Client, connections: int, seconds: float) -> tuple[float, int]:
    """``connections`` senders, each sending again as soon as its answer is in: requests/s, errors."""
    loop = asyncio.get_running_loop()
    done = errors = 0
    end = loop.time() + seconds

    async def sender() -> None:
        nonlocal done, errors
        while loop.time() < end:
            try:
                ok = (await client.send())[0] == 200
            except (OSError, asyncio.IncompleteReadError, ValueError):
                ok = False
            done += ok
            errors += not ok

    started = loop.time()
    await asyncio.gather(*(sender() for _ in range(connections)))
    return round(done / (loop.time() - started), 1), errors


async def count_loop(client: Client, connections: int, requests: int) -> int:
    """Send ``requests`` requests as fast as ``connections`` senders can; how many failed."""
    remaining = requests
    errors = 0

    async def sender() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            try:
                ok = (await client.send())[0] == 200
            except (OSError, asyncio.IncompleteReadError, ValueError):
                ok = False
            errors += not ok

    await asyncio.gather(*(sender() for _ in range(connections)))
    return errors
