"""A small HTTP/1.1 client for the relay's hot path: pooled keep-alive connections, one request on each at a time.

Why not aiohttp on this path: a relayed call to a local upstream took about 150 us of the event
loop's CPU through aiohttp (its request and response objects, header multidicts, timer contexts, a
stream reader, its connector's bookkeeping) and 53 us written on an asyncio protocol with
httptools' parser (the one uvicorn serves with), one call at a time on one core (docs/benchmarks.md,
"The relay's HTTP client"). At 800 requests/s that difference is a tenth of the core.

What it does: a request with a body over ``http`` or ``https`` (the system's certificate store),
the answer's status and headers, then its body whole (``read``) or line by line as it comes
(``async for``), with flow control: reading stops while more than ``HIGH_WATER`` bytes wait unread.
``connect_timeout`` bounds connecting; ``read_timeout`` bounds every wait for the answer's bytes (to
the first one, then between any two), and TimeoutError says it ran out. A connection goes back to
the pool when its answer was read to the end and the server keeps it open (``release``); otherwise
it is closed, which stops the upstream's work. A kept connection that the server closed meanwhile
is the keep-alive race every HTTP/1.1 client meets: a request that got no byte back on a reused
connection is sent again once, on a new one.

What it does not: proxies (the relay never used any), redirects (an API that answers 3xx answers
with an error), HTTP/2, cookies. It asks for no compression (``accept-encoding: identity``) and
still decodes gzip and deflate if a server compresses anyway.
"""

import asyncio
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 2**22  # bytes read ahead of the reader before the socket is paused
MAX_LINE = 2**22  # one line of a streamed answer (a long tool call or logprobs chunk), at most
MAX_BODY = 2**28  # a whole answer, at most


class HTTPClientError(Exception):
    """The connection failed or broke off, or what came back was not an HTTP answer."""


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    @property
    def netloc(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def _split(url: str) -> tuple[Origin, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http or https URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Origin(parts.scheme, parts.hostname, port), target


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """Header lines to send with ``Client.request``: checked and encoded once, by whoever sends them often."""
    lines = []
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n\0") or not name or ":" in name:
            raise ValueError(f"a header that cannot be sent: {name!r}")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")


class _Connection(asyncio.Protocol):
    """One connection and the answer being read on it."""

    def __init__(self, client: "Client", origin: Origin) -> None:
        self.client = client
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.head = False  # the status line and headers are in
        self.complete = False  # the whole answer is in
        self.received = False  # any byte of the answer came
        self.lost: BaseException | None = None
        self.buffer = bytearray()
        self._decoder: Any = None
        self._until_close = False  # neither a length nor chunks: the answer ends with the connection
        self._paused = False
        self._keep_alive = False  # the server keeps the connection open after this answer

    # asyncio's side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.lost = HTTPClientError(f"the upstream's answer is not HTTP/1.1: {exc}")
            self._close()
        self._wake()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._forget(self)
        if self.head and self._until_close and not self.complete and self.lost is None:
            self.on_message_complete()  # the answer was delimited by the connection's end
        elif not self.complete and self.lost is None:
            self.lost = HTTPClientError("the upstream closed the connection" + (f": {exc}" if exc else ""))
        self.transport = None
        self._wake()

    # httptools' side
    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if 100 <= self.status < 200:  # an interim answer: the real one follows on the same parser
            self.raw_headers = []
            return
        self.head = True
        length = chunked = False
        for name, value in self.raw_headers:
            lower = name.lower()
            if lower == b"content-length":
                length = True
            elif lower == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif lower == b"content-encoding" and value.strip().lower() in (b"gzip", b"x-gzip", b"deflate"):
                self._decoder = zlib.decompressobj(wbits=47)  # gzip or zlib, whichever it is
        self._until_close = not (length or chunked) and self.status not in (204, 304)

    def on_body(self, body: bytes) -> None:
        if self._decoder is not None:
            try:
                body = self._decoder.decompress(body)
            except zlib.error as exc:
                self.lost = HTTPClientError(f"the upstream's compressed answer is broken: {exc}")
                self._close()
                return
        self.buffer += body
        if len(self.buffer) > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.head:
            if self._decoder is not None:
                self.buffer += self._decoder.flush()
            self.complete = True
            self._keep_alive = not self._until_close and self._parser.should_keep_alive()

    # the request's side
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _timed_out(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError())

    async def wait(self, timeout: float) -> None:
        """Until something new comes (bytes, the end, the connection's end); TimeoutError if nothing
        does within ``timeout`` seconds."""
        if self.lost is not None:
            raise self.lost
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout, self._timed_out)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self.lost is not None:
            raise self.lost

    def send(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise HTTPClientError("the connection is closed")
        self.transport.write(data)

    def reusable(self) -> bool:
        return (
            self.complete
            and self.lost is None
            and self._keep_alive
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def give_back(self) -> None:
        """Back to the pool if it can serve another request, else closed."""
        if self.reusable():
            self._reset()
            self.client._keep(self)
        else:
            self._close()
            self.client._forget(self)


class Response:
    """An answer: ``status`` and ``headers`` (lower-case names) at once, the body by ``read`` or line by line."""

    def __init__(self, connection: _Connection, read_timeout: float) -> None:
        self._conn = connection
        self._timeout = read_timeout
        self._done = False
        self.status = connection.status
        self.headers: dict[str, str] = {}
        for name, value in connection.raw_headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    async def read(self) -> bytes:
        conn = self._conn
        while not conn.complete:
            if len(conn.buffer) > MAX_BODY:
                raise HTTPClientError(f"the upstream's answer is over {MAX_BODY} bytes")
            await conn.wait(self._timeout)
        body = bytes(conn.buffer)
        conn.buffer.clear()
        return body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """The body's lines as they come, each with its ``\\n`` (the last one perhaps without).

        ValueError for a line over ``MAX_LINE`` bytes."""
        conn = self._conn
        start = 0  # where to look for the next newline: the bytes before it hold none
        while True:
            end = conn.buffer.find(b"\n", start)
            if end >= 0:
                line = bytes(conn.buffer[: end + 1])
                del conn.buffer[: end + 1]
                start = 0
                yield line
                continue
            if conn.complete:
                if conn.buffer:
                    line = bytes(conn.buffer)
                    conn.buffer.clear()
                    yield line
                return
            if len(conn.buffer) > MAX_LINE:
                raise ValueError(f"a line of the upstream's stream is over {MAX_LINE} bytes")
            start = len(conn.buffer)
            await conn.wait(self._timeout)

    def release(self) -> None:
        """Done with it: the connection goes back to the pool if the answer was read to its end (and
        the server keeps it), else it is closed."""
        if not self._done:
            self._done = True
            self._conn.give_back()

    def close(self) -> None:
        """Done with it, and the connection closed whatever was left unread."""
        if not self._done:
            self._done = True
            self._conn._close()
            self._conn.client._forget(self._conn)


class Client:
    """Connections to upstreams, at most ``connections`` open at once; an idle one is kept for
    ``keepalive`` seconds."""

    def __init__(self, *, connections: int = 1000, keepalive: float = 60.0) -> None:
        self._limit = connections
        self._keepalive = keepalive
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._connecting = 0
        self._slots: deque[asyncio.Future[None]] = deque()  # requests waiting for a connection's room
        self._targets: dict[str, tuple[Origin, str]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes = b"",
        headers: bytes = b"",
        connect_timeout: float | None = None,
        read_timeout: float = 300.0,
    ) -> Response:
        """Send the request (``headers`` from ``encode_headers``) and wait for the answer's head; the
        caller reads the body, then calls ``release`` (or ``close``) on the Response."""
        split = self._targets.get(url)
        if split is None:
            split = self._targets[url] = _split(url)
        origin, target = split
        head = (
            f"{method} {target} HTTP/1.1\r\nhost: {origin.netloc}\r\ncontent-length: {len(body)}\r\n"
            "accept-encoding: identity\r\n"
        ).encode("latin-1")
        data = head + headers + b"\r\n" + body
        for attempt in (1, 2):
            conn, reused = await self._connection(origin, connect_timeout)
            try:
                conn.send(data)
                while not conn.head:
                    await conn.wait(read_timeout)
            except HTTPClientError:
                conn._close()
                self._forget(conn)
                if reused and not conn.received and attempt == 1:
                    continue  # the server had closed the kept connection: once more, on a new one
                raise
            except BaseException:
                conn._close()
                self._forget(conn)
                raise
            return Response(conn, read_timeout)
        raise AssertionError("unreachable")

    async def _connection(self, origin: Origin, timeout: float | None) -> tuple[_Connection, bool]:
        """A kept connection to ``origin`` (and True), or a new one (and False) once there is room."""
        loop = asyncio.get_running_loop()
        while True:
            idle = self._idle.get(origin)
            while idle:
                conn = idle.pop()
                transport = conn.transport
                if transport is not None and not transport.is_closing():
                    if loop.time() - conn.idle_since < self._keepalive:
                        return conn, True
                conn._close()
                self._forget(conn)
            if len(self._open) + self._connecting < self._limit:
                break
            if not self._drop_oldest_idle():  # room from another origin's idle connection, or wait
                slot: asyncio.Future[None] = loop.create_future()
                self._slots.append(slot)
                await slot
        self._connecting += 1
        try:
            async with asyncio.timeout(timeout):
                _, conn = await asyncio.get_running_loop().create_connection(
                    lambda: _Connection(self, origin),
                    origin.host,
                    origin.port,
                    ssl=self._context() if origin.scheme == "https" else None,
                )
        except OSError as exc:
            raise HTTPClientError(f"could not connect: {exc}") from exc
        finally:
            self._connecting -= 1
            self._free_a_slot()
        self._open.add(conn)
        return conn, False

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _drop_oldest_idle(self) -> bool:
        oldest: _Connection | None = None
        for conns in self._idle.values():
            if conns and (oldest is None or conns[0].idle_since < oldest.idle_since):
                oldest = conns[0]
        if oldest is None:
            return False
        self._idle[oldest.origin].remove(oldest)
        oldest._close()
        self._forget(oldest)
        return True

    def _keep(self, conn: _Connection) -> None:
        if self._closed:
            conn._close()
            self._forget(conn)
            return
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.setdefault(conn.origin, []).append(conn)
        self._free_a_slot()

    def _forget(self, conn: _Connection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            idle = self._idle.get(conn.origin)
            if idle and conn in idle:
                idle.remove(conn)
            self._free_a_slot()

    def _free_a_slot(self) -> None:
        while self._slots:
            slot = self._slots.popleft()
            if not slot.done():
                slot.set_result(None)
                return

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        return sum(len(conns) for conns in self._idle.values())

    async def close(self) -> None:
        """Close every connection; requests still reading lose theirs."""
        self._closed = True
        for conn in list(self._open):
            conn._close()
        self._idle.clear()
        await asyncio.sleep(0)  # the transports' closing callbacks run
