"""A small HTTP/1.1 client for the relay's hot path: pooled keep-alive connections, one request on each at a time.

Why not aiohttp on this path: a relayed call to a local upstream took about 150 us of the event
loop's CPU through aiohttp (its request and response objects, header multidicts, timer contexts, a
stream reader, its connector's bookkeeping) and 53 us written on an asyncio protocol with
httptools' parser (the one uvicorn serves with), one call at a time on one core (docs/benchmarks.md,
"The relay's own HTTP client"). At 800 requests/s that difference is a tenth of the core.

What it does: a request with a body over ``http`` or ``https`` (the system's certificate store),
the answer's status and headers, then its body whole (``read``) or line by line as it comes
(``async for``), with flow control: reading stops while more than ``HIGH_WATER`` bytes wait unread.
``connect_timeout`` bounds connecting; ``read_timeout`` bounds every wait for the answer's bytes (to
the first one, then between any two), and TimeoutError says it ran out. A connection goes back to
the pool when its answer was read to the end and the server keeps it open (``release``); otherwise
it is closed, which stops the upstream's work. A stream released right after its last event,
before the server's closing chunk came, lingers up to ``LINGER`` seconds for it and then goes back
to the pool (or is closed). A kept connection that the server closed meanwhile is the keep-alive
race every HTTP/1.1 client meets: a request whose reused connection ended within ``RESEND_WINDOW``
of sending, with no byte of an answer, is sent again once, on a new connection. Past that window the
upstream may have been working on it, and the failure is the caller's to handle (a non-idempotent
POST is not sent twice). A connection that receives bytes while idle, or bytes past its answer's
end, is never used again.

What it does not: proxies (the relay never used any), redirects (an API that answers 3xx answers
with an error), HTTP/2, cookies, ``HEAD``. It asks for no compression (``accept-encoding:
identity``) and still decodes gzip and deflate (zlib-wrapped) if a server compresses anyway. A URL's
user and password are sent as basic authentication unless the headers carry an authorization.
"""

import asyncio
import base64
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import httptools

from chatgate.config import header_fault

HIGH_WATER = 2**22  # bytes read ahead of the reader before the socket is paused
MAX_LINE = 2**22  # one line of a streamed answer (a long tool call or logprobs chunk), at most
MAX_BODY = 2**28  # a whole answer, at most
LINGER = 2.0  # seconds a released stream waits for its closing chunk before it is closed
RESEND_WINDOW = 0.25  # seconds after sending within which a kept connection's end is the keep-alive race


class HTTPClientError(Exception):
    """The connection failed or broke off, or what came back was not an HTTP answer."""


class InvalidURL(HTTPClientError, ValueError):
    """A URL this client cannot send to."""


class ConnectFailed(HTTPClientError):
    """No connection could be made (refused, unreachable, a name that does not resolve)."""


class Disconnected(HTTPClientError):
    """The connection ended (closed, reset, or closed by this client) before the answer did."""


class MalformedAnswer(HTTPClientError):
    """What came back was not an HTTP/1.1 answer, or its compressed body was broken."""


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


@dataclass(frozen=True)
class _Target:
    origin: Origin
    path: str  # the request target: path and query
    host: bytes  # the host line
    authorization: bytes  # a basic authorization line from the URL's user and password, or b""


def _split(url: str) -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise InvalidURL(f"not a URL this client can send to: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidURL(f"not an http or https URL: {url!r}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    origin = Origin(parts.scheme, parts.hostname, port)
    try:
        host = b"host: " + origin.netloc.encode("idna") + b"\r\n"
    except UnicodeError as exc:
        raise InvalidURL(f"not a host name this client can send to: {parts.hostname!r}") from exc
    authorization = b""
    if parts.username is not None:
        user = unquote(parts.username) + ":" + unquote(parts.password or "")
        authorization = b"authorization: Basic " + base64.b64encode(user.encode()) + b"\r\n"
    return _Target(origin, path, host, authorization)


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """Header lines to send with ``Client.request`` (names in lower case): checked and encoded once,
    by whoever sends them often. A ``host`` or ``accept-encoding`` here replaces the client's own;
    of two names that differ only in case, the later one is sent."""
    lines: dict[str, str] = {}
    for name, value in headers.items():
        if fault := header_fault(name, value):
            raise ValueError(f"a header that cannot be sent: {fault}")
        lines[name.lower()] = f"{name.lower()}: {value}\r\n"
    return "".join(lines.values()).encode("latin-1")


def _has(headers: bytes, name: bytes) -> bool:
    """Whether ``encode_headers``' lines carry ``name`` (lower case, with its colon)."""
    return headers.startswith(name) or b"\n" + name in headers


def _header_block(target: _Target, headers: bytes) -> bytes:
    """Every header line a request to ``target`` with ``headers`` sends but its length: the client's
    own (host, accept-encoding, the URL's authorization) where the caller's do not replace them."""
    own = b""
    if not _has(headers, b"host:"):
        own += target.host
    if not _has(headers, b"accept-encoding:"):
        own += b"accept-encoding: identity\r\n"
    if target.authorization and not _has(headers, b"authorization:"):
        own += target.authorization
    return own + headers


class _Connection(asyncio.Protocol):
    """One connection and the answer being read on it."""

    def __init__(self, client: "Client", origin: Origin) -> None:
        self.client = client
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.sent_at = 0.0
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._closed_here = False  # closed by this side: what came before is not a whole answer
        self._paused = False
        self._reset()

    def _reset(self) -> None:
        if self._paused and self.transport is not None:
            self.transport.resume_reading()  # a pooled connection must see what comes (the server's close)
        self._paused = False
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
        self._stray = False  # bytes past the answer's end: the connection is not used again
        self._fed = False  # body bytes came
        self._keep_alive = False  # the server keeps the connection open after this answer

    # asyncio's side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self.lost = MalformedAnswer(f"the upstream's answer is not HTTP/1.1: {exc!r}")
            self._close()
        self._wake()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._forget(self)
        if self._linger is not None:
            self._linger.cancel()
        ended = exc is None and not self._closed_here  # the server's orderly close, not a reset or ours
        if self.head and self._until_close and ended and not self.complete and self.lost is None:
            self.on_message_complete()  # the answer was delimited by the connection's end
        elif not self.complete and self.lost is None:
            self.lost = Disconnected("the upstream closed the connection" + (f": {exc}" if exc else ""))
        self.transport = None
        self._wake()

    # httptools' side
    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:
            self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.complete:  # a second answer to one request: the connection is not to be trusted
            self._stray = True
            return
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
            elif lower == b"transfer-encoding" and value.strip().lower().endswith(b"chunked"):
                chunked = True
            elif lower == b"content-encoding" and value.strip().lower() in (b"gzip", b"x-gzip", b"deflate"):
                self._decoder = zlib.decompressobj(wbits=47)  # gzip or zlib, whichever it is
        self._until_close = not (length or chunked) and self.status not in (204, 304)

    def on_body(self, body: bytes) -> None:
        if self.complete:
            self._stray = True
            return
        if self._decoder is not None:
            try:
                body = self._decoder.decompress(body)
            except zlib.error as exc:
                self.lost = MalformedAnswer(f"the upstream's compressed answer is broken: {exc}")
                self._close()
                return
        self._fed = True
        self.buffer += body
        if len(self.buffer) > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if not self.head or self.complete:
            return
        if self._decoder is not None:
            self.buffer += self._decoder.flush()
            if self._fed and not self._decoder.eof:
                self.lost = MalformedAnswer("the upstream's compressed answer was cut short")
        self.complete = True
        self._keep_alive = not self._until_close and self._parser.should_keep_alive()
        if self._linger is not None:  # released already, waiting for this: back to the pool now
            self._linger.cancel()
            self._linger = None
            self._loop.call_soon(self.give_back)  # after the parser's callbacks, not inside them

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
        self.sent_at = self._loop.time()
        if self.transport is None or self.transport.is_closing():
            raise Disconnected("the connection is closed")
        self.transport.write(data)

    def since_sent(self) -> float:
        return self._loop.time() - self.sent_at

    def reusable(self) -> bool:
        return (
            self.complete
            and self.lost is None
            and self._keep_alive
            and not self._stray
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def idle_and_sound(self) -> bool:
        """Pooled, and nothing came since: no stray bytes, no close seen."""
        return not self.received and self.transport is not None and not self.transport.is_closing()

    def _close(self) -> None:
        if self.transport is not None:
            self._closed_here = True
            self.transport.close()

    def give_back(self) -> None:
        """Back to the pool if it can serve another request, else closed; an answer still coming in
        its chunks with nothing wrong so far lingers for its end (see ``LINGER``)."""
        if self.reusable():
            self._reset()
            self.client._keep(self)
        elif (
            not self.complete
            and self.head
            and not self._until_close
            and self.lost is None
            and self.transport is not None
            and not self.transport.is_closing()
        ):
            self.buffer.clear()
            self._linger = self._loop.call_later(LINGER, self.drop)
            if self._paused:
                self._paused = False
                self.transport.resume_reading()
        else:
            self.drop()

    def drop(self) -> None:
        self._linger = None
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
                raise MalformedAnswer(f"the upstream's answer is over {MAX_BODY} bytes")
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
        the server keeps it), or lingers for the end (see ``LINGER``), else it is closed. Call
        ``close`` instead when the rest of the answer is unwanted: that stops the upstream's work."""
        if not self._done:
            self._done = True
            self._conn.give_back()

    def close(self) -> None:
        """Done with it, and the connection closed whatever was left unread."""
        if not self._done:
            self._done = True
            self._conn.drop()


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
        # (url, headers) -> where to send and the header lines, worked out once per pair
        self._targets: dict[tuple[str, bytes], tuple[_Target, bytes]] = {}
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
        found = self._targets.get((url, headers))
        if found is None:
            target = _split(url)
            found = (target, _header_block(target, headers))
            if len(self._targets) < 1024:
                self._targets[url, headers] = found
        target, block = found
        head = f"{method} {target.path} HTTP/1.1\r\ncontent-length: {len(body)}\r\n".encode("latin-1")
        data = head + block + b"\r\n" + body
        for attempt in (1, 2):
            conn, reused = await self._connection(target.origin, connect_timeout, fresh=attempt == 2)
            try:
                conn.send(data)
                while not conn.head:
                    await conn.wait(read_timeout)
            except HTTPClientError:
                conn.drop()
                raced = conn.since_sent() < RESEND_WINDOW
                if reused and not conn.received and raced and attempt == 1:
                    continue  # the server had closed the kept connection: once more, on a new one
                raise
            except BaseException:
                conn.drop()
                raise
            return Response(conn, read_timeout)
        raise AssertionError("unreachable")

    async def _connection(
        self, origin: Origin, timeout: float | None, *, fresh: bool = False
    ) -> tuple[_Connection, bool]:
        """A kept connection to ``origin`` (and True), or a new one (and False) once there is room;
        ``fresh``: a new one."""
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise ConnectFailed("the client is closed")
            idle = self._idle.get(origin)
            while idle and not fresh:
                conn = idle.pop()
                if conn.idle_and_sound() and loop.time() - conn.idle_since < self._keepalive:
                    return conn, True
                conn.drop()
            if len(self._open) + self._connecting < self._limit:
                break
            if not self._drop_oldest_idle():  # room from another origin's idle connection, or wait
                slot: asyncio.Future[None] = loop.create_future()
                self._slots.append(slot)
                try:
                    await slot
                except asyncio.CancelledError:
                    if slot.done() and not slot.cancelled():
                        self._free_a_slot()  # woken and gone: the room goes to the next one
                    raise  # (a cancelled slot left in the line is passed over)
        self._connecting += 1
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, origin),
                    origin.host,
                    origin.port,
                    ssl=self._context() if origin.scheme == "https" else None,
                )
        except BaseException as exc:
            self._connecting -= 1
            self._free_a_slot()  # the room it would have taken
            if isinstance(exc, OSError | UnicodeError):
                raise ConnectFailed(f"could not connect: {exc}") from exc
            raise
        self._connecting -= 1
        self._open.add(conn)  # the room it was connecting in is its own now
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
        oldest.drop()
        return True

    def _keep(self, conn: _Connection) -> None:
        if self._closed:
            conn.drop()
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
