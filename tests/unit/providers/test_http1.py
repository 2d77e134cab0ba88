"""The relay's HTTP/1.1 client against a real TCP server on this machine that answers exactly the bytes each test scripts."""

import asyncio
import base64
import gzip
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from chatgate.providers import http1
from chatgate.providers.http1 import Client, HTTPClientError, encode_headers

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]
JSON = encode_headers({"content-type": "application/json", "authorization": "Bearer k"})


@dataclass
class Server:
    port: int = 0
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"


async def read_request(reader: asyncio.StreamReader, server: Server) -> bool:
    """One request off the connection (head and body), kept in ``server.requests``; False at its end."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    server.requests.append(head + await reader.readexactly(length))
    return True


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[Server]:
    server = Server()
    tasks: set[asyncio.Task[None]] = set()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await handler(reader, writer, server)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    listening = await asyncio.start_server(connected, "127.0.0.1", 0)
    server.port = listening.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listening.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await listening.wait_closed()


def answer(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), b"".join(extra), body)


async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
    while await read_request(reader, server):
        writer.write(answer(b'{"n": %d}' % len(server.requests)))
        await writer.drain()


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    c = Client()
    yield c
    await c.close()


async def post(client: Client, server: Server, body: bytes = b"{}", timeout: float = 5.0) -> http1.Response:
    return await client.request("POST", server.url, body=body, headers=JSON, read_timeout=timeout)


async def exchange(client: Client, server: Server, body: bytes = b"{}", timeout: float = 5.0) -> bytes:
    """A request, its whole answer's body, and the connection given back."""
    response = await post(client, server, body, timeout)
    try:
        return await response.read()
    finally:
        response.release()


async def test_the_request_goes_as_given_and_a_kept_connection_serves_the_next(client: Client) -> None:
    async with serving(keep_answering) as server:
        for n in (1, 2, 3):
            response = await post(client, server, b'{"x": 1}')
            assert (response.status, await response.read()) == (200, b'{"n": %d}' % n)
            assert response.headers["content-length"] == str(len(b'{"n": 1}'))
            response.release()
        assert server.connections == 1
        assert client.open_connections == 1 and client.idle_connections == 1
        head, _, body = server.requests[0].partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
        assert b"host: 127.0.0.1:%d" % server.port in lines
        assert {b"content-length: 8", b"content-type: application/json", b"authorization: Bearer k"} <= set(
            lines
        )
        assert b"accept-encoding: identity" in lines  # no compression asked for
        assert body == b'{"x": 1}'


async def test_a_chunked_stream_comes_line_by_line_as_it_is_written(client: Client) -> None:
    lines: list[bytes] = []

    async def until(count: int) -> None:
        while len(lines) < count:
            await asyncio.sleep(0.01)

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await read_request(reader, server)
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/event-stream\r\n\r\n"
        )
        # each piece is written only once the client has the lines before it: they came as written
        for piece, seen in ((b"data: one\n\nda", 2), (b"ta: tw", 2), (b"o\n\n", 4)):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await until(seen)
        writer.write(b"5\r\ntail!\r\n0\r\n\r\n")
        await read_request(reader, server)  # the connection stays open for another request

    async with serving(stream) as server:
        response = await post(client, server)
        async for line in response:
            lines.append(line)
        assert lines == [b"data: one\n", b"\n", b"data: two\n", b"\n", b"tail!"]
        response.release()
        assert client.idle_connections == 1


async def test_an_answer_that_ends_with_its_connection_is_read_whole_and_the_connection_not_kept(
    client: Client,
) -> None:
    async def close_delimited(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        await read_request(reader, server)
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{"whole": ')
        await writer.drain()
        writer.write(b"true}")
        writer.close()

    async with serving(close_delimited) as server:
        assert await exchange(client, server) == b'{"whole": true}'
        assert client.open_connections == 0


async def test_a_server_that_says_close_gets_a_new_connection_next_time(client: Client) -> None:
    async def say_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await read_request(reader, server)
        writer.write(answer(b"{}", b"connection: close\r\n"))
        await writer.drain()

    async with serving(say_close) as server:
        for _ in range(2):
            assert await exchange(client, server) == b"{}"
        assert server.connections == 2


async def test_a_kept_connection_the_server_closed_is_replaced_once(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "RESEND_WINDOW", 5.0)  # however slow this machine is at the moment

    async def one_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        await read_request(reader, server)
        writer.write(answer(b"{}"))  # says nothing of closing: the client keeps the connection...
        await writer.drain()
        # ...and the next request on it finds it closed, without an answer

    async with serving(one_per_connection) as server:
        for _ in range(3):
            assert await exchange(client, server) == b"{}"
        assert server.connections == 3

    async def never_answers(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        await read_request(reader, server)  # and closes: a new connection failing is not tried again

    async with serving(never_answers) as server:
        with pytest.raises(http1.Disconnected, match="closed"):
            await post(client, server)
        assert server.connections == 1


async def test_no_byte_within_the_read_timeout_is_a_timeout_before_and_after_the_head(client: Client) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await read_request(reader, server)
        if len(server.requests) == 2:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345")
            await writer.drain()
        await asyncio.sleep(30)

    async with serving(stall) as server:
        with pytest.raises(TimeoutError):
            await post(client, server, timeout=0.2)
        response = await post(client, server, timeout=0.2)
        with pytest.raises(TimeoutError):
            await response.read()
        response.close()
        assert client.open_connections == 0  # neither is kept: the upstream's work stops


async def test_bytes_that_keep_coming_never_time_out_however_long_the_whole(client: Client) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await read_request(reader, server)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n")
        for byte in b"01234567":
            await asyncio.sleep(0.1)
            writer.write(bytes([byte]))
            await writer.drain()
        await read_request(reader, server)

    async with serving(trickle) as server:
        response = await post(client, server, timeout=0.6)  # 0.8 s in all, 0.1 s between bytes
        assert await response.read() == b"01234567"
        response.release()


@pytest.mark.parametrize(
    "reply",
    [b"HTTP/1.1 abc\r\n\r\n", b"SMTP ready\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"],
)
async def test_an_answer_that_is_not_http_is_a_client_error(client: Client, reply: bytes) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await read_request(reader, server)
        writer.write(reply)
        await writer.drain()
        await asyncio.sleep(30)

    async with serving(garbage) as server:
        with pytest.raises(http1.MalformedAnswer, match="not HTTP"):
            await post(client, server)
        assert client.open_connections == 0


async def test_a_compressed_answer_is_decoded_whole_and_streamed(client: Client) -> None:
    packed = gzip.compress(b"data: a\n\ndata: b\n\n")

    async def compressed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await read_request(reader, server):
            writer.write(answer(packed, b"content-encoding: gzip\r\n"))
            await writer.drain()

    async with serving(compressed) as server:
        assert await exchange(client, server) == b"data: a\n\ndata: b\n\n"
        response = await post(client, server)
        assert [line async for line in response] == [b"data: a\n", b"\n", b"data: b\n", b"\n"]
        response.release()


async def test_a_line_over_the_limit_is_refused(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1, "MAX_LINE", 64)

    async def long_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await read_request(reader, server)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"%x\r\n%s\r\n" % (100, b"x" * 100))
        await writer.drain()
        await asyncio.sleep(30)

    async with serving(long_line) as server:
        response = await post(client, server)
        with pytest.raises(ValueError, match="over 64 bytes"):
            async for _ in response:
                pass
        response.close()


def half_then(rest: asyncio.Event) -> Handler:
    """Answers the first request with its head and half its body, the rest once ``rest`` is set;
    every later request at once."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await read_request(reader, server):
            if len(server.requests) == 1:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345")
                await writer.drain()
                await rest.wait()
                writer.write(b"67890")
            else:
                writer.write(answer(b"{}"))
            await writer.drain()

    return handler


async def test_an_answer_closed_before_its_end_closes_its_connection_at_once(client: Client) -> None:
    async with serving(half_then(asyncio.Event())) as server:
        response = await post(client, server)
        response.close()  # the rest is unwanted: the upstream's work stops
        assert client.open_connections == 0
        assert await exchange(client, server) == b"{}"
        assert server.connections == 2


async def test_an_answer_released_before_its_end_lingers_for_it_then_serves_again(client: Client) -> None:
    rest = asyncio.Event()
    async with serving(half_then(rest)) as server:
        response = await post(client, server)
        response.release()  # e.g. a stream whose [DONE] came before the closing chunk
        assert (client.open_connections, client.idle_connections) == (1, 0)
        rest.set()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if client.idle_connections:
                break
        assert client.idle_connections == 1  # the end came: back to the pool
        assert await exchange(client, server) == b"{}"
        assert server.connections == 1


async def test_an_answer_released_before_an_end_that_never_comes_is_closed_after_the_linger(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "LINGER", 0.05)
    async with serving(half_then(asyncio.Event())) as server:
        response = await post(client, server)
        response.release()
        assert client.open_connections == 1
        await asyncio.sleep(0.2)
        assert client.open_connections == 0


async def test_an_answer_that_had_all_come_is_kept_read_or_not(client: Client) -> None:
    async with serving(keep_answering) as server:
        response = await post(client, server)
        response.release()  # never read, but whole: the connection is at a clean boundary
        assert client.idle_connections == 1
        assert await exchange(client, server) == b'{"n": 2}'
        assert server.connections == 1


async def test_at_the_connection_limit_a_request_waits_for_a_connection_to_come_back() -> None:
    client = Client(connections=1)
    try:
        async with serving(keep_answering) as server:
            first = await post(client, server)
            second = asyncio.create_task(post(client, server))
            await asyncio.sleep(0.05)
            assert not second.done()  # no room for a second connection
            await first.read()
            first.release()
            response = await second
            assert await response.read() == b'{"n": 2}'
            response.release()
            assert server.connections == 1  # it took the one given back
    finally:
        await client.close()


async def test_reading_pauses_while_much_waits_unread_and_nothing_is_lost(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "HIGH_WATER", 1024)
    lines = [b"data: %06d %s\n" % (i, b"y" * 90) for i in range(2000)]  # 200 KB

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await read_request(reader, server)
        body = b"".join(lines)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body))
        writer.write(body)
        await writer.drain()
        await asyncio.sleep(30)

    async with serving(flood) as server:
        response = await post(client, server)
        await asyncio.sleep(0.1)  # the server has written everything it could
        conn = response._conn
        assert conn._paused and len(conn.buffer) < len(b"".join(lines))
        assert [line async for line in response] == lines
        response.release()


async def test_an_interim_answer_is_skipped(client: Client) -> None:
    async def interim(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await read_request(reader, server)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"{}", b"x-final: yes\r\n"))
        await writer.drain()
        await asyncio.sleep(30)

    async with serving(interim) as server:
        response = await post(client, server)
        assert (response.status, response.headers.get("x-final"), await response.read()) == (
            200,
            "yes",
            b"{}",
        )
        response.release()


async def test_an_error_status_comes_with_its_body_and_repeated_headers_joined(client: Client) -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await read_request(reader, server)
        body = b'{"error": {"message": "slow down"}}'
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nx-note: a\r\nx-note: b\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        await asyncio.sleep(30)

    async with serving(refuse) as server:
        response = await post(client, server)
        assert (response.status, response.headers["retry-after"], response.headers["x-note"]) == (
            429,
            "3",
            "a, b",
        )
        assert await response.read() == b'{"error": {"message": "slow down"}}'
        response.release()


async def test_nothing_listening_is_a_client_error(client: Client) -> None:
    async with serving(keep_answering) as server:
        url = server.url
    with pytest.raises(http1.ConnectFailed, match="could not connect"):
        await client.request("POST", url, body=b"{}", headers=JSON)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-a": "1\r\nx-injected: 1"},
        {"bad\nname": "v"},
        {"a:b": "v"},
        {"": "v"},
        {"Content-Length": "3"},
        {"transfer-encoding": "chunked"},
        {"connection": "close"},
    ],
)
def test_a_header_that_would_break_the_request_is_refused(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="cannot be sent"):
        encode_headers(headers)


@pytest.mark.parametrize("url", ["ftp://host/x", "/relative", "http:///no-host", "http://h:99999/x"])
async def test_only_http_and_https_urls_are_taken(client: Client, url: str) -> None:
    with pytest.raises(http1.InvalidURL, match=r"not an http or https URL|not a URL") as raised:
        await client.request("POST", url)
    assert isinstance(raised.value, HTTPClientError)  # what the relay catches


def test_the_host_header_names_the_port_only_when_it_is_not_the_schemes() -> None:
    target = http1._split("https://api.example.com/v1/x?y=1")
    assert (target.origin, target.path, target.host) == (
        http1.Origin("https", "api.example.com", 443),
        "/v1/x?y=1",
        b"host: api.example.com\r\n",
    )
    assert http1.Origin("https", "api.example.com", 443).netloc == "api.example.com"
    assert http1.Origin("http", "::1", 8080).netloc == "[::1]:8080"


async def test_a_paused_connection_given_back_reads_again(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole answer over the high-water mark paused the socket on its last bytes; pooled so, the
    next request on it would never be read."""
    monkeypatch.setattr(http1, "HIGH_WATER", 1024)
    big = b"z" * 50_000

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await read_request(reader, server):
            writer.write(answer(big if len(server.requests) == 1 else b"{}"))
            await writer.drain()

    async with serving(large) as server:
        assert await exchange(client, server) == big
        assert await exchange(client, server, timeout=2.0) == b"{}"
        assert server.connections == 1


async def test_a_waiter_cancelled_as_it_is_woken_passes_the_room_on() -> None:
    client = Client(connections=1)
    try:
        async with serving(keep_answering) as server:
            first = await post(client, server)
            await first.read()
            second = asyncio.create_task(post(client, server))
            third = asyncio.create_task(post(client, server))
            await asyncio.sleep(0.05)
            first.release()  # wakes the second...
            second.cancel()  # ...which leaves in the same turn
            response = await asyncio.wait_for(third, 2.0)
            assert await response.read() == b'{"n": 2}'
            response.release()
            assert second.cancelled()
    finally:
        await client.close()


async def test_bytes_on_an_idle_connection_keep_it_from_being_used_again(client: Client) -> None:
    """A server that says something while the connection is idle (a 408 before it closes): that is
    no answer to the next request, which goes on a new connection."""

    async def nags(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        if server.connections == 1:
            await read_request(reader, server)
            writer.write(answer(b'{"first": true}'))
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(30)
        while await read_request(reader, server):
            writer.write(answer(b'{"later": true}'))
            await writer.drain()

    async with serving(nags) as server:
        assert await exchange(client, server) == b'{"first": true}'
        await asyncio.sleep(0.2)
        response = await post(client, server)
        assert (response.status, await response.read()) == (200, b'{"later": true}')
        response.release()
        assert server.connections == 2


async def test_a_second_answer_behind_the_first_keeps_the_connection_from_being_used_again(
    client: Client,
) -> None:
    async def twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await read_request(reader, server):
            writer.write(answer(b"{}") + b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()

    async with serving(twice) as server:
        response = await post(client, server)
        assert (response.status, await response.read()) == (200, b"{}")  # the first one's status stands
        response.release()
        assert client.open_connections == 0


async def test_the_one_resend_goes_on_a_new_connection_not_another_kept_one(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "RESEND_WINDOW", 5.0)  # however slow this machine is at the moment
    kept: list[asyncio.StreamWriter] = []

    async def one_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await read_request(reader, server):
            writer.write(answer(b"{}"))
            await writer.drain()
            kept.append(writer)

    async with serving(one_each) as server:
        held = [await post(client, server) for _ in range(2)]  # two connections, both kept after
        for response in held:
            await response.read()
            response.release()
        assert client.idle_connections == 2
        for writer in kept:  # the server drops both kept connections; the client has not seen it yet
            writer.transport.abort()
        assert await exchange(client, server) == b"{}"
        assert server.connections == 3


async def test_a_kept_connection_lost_after_the_upstream_had_time_to_work_is_not_sent_again(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "RESEND_WINDOW", 0.05)

    async def works_then_dies(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        await read_request(reader, server)
        writer.write(answer(b"{}"))
        await writer.drain()
        if await read_request(reader, server):
            await asyncio.sleep(0.2)  # working on it...
            writer.transport.abort()  # ...and gone, without an answer

    async with serving(works_then_dies) as server:
        response = await post(client, server)
        await response.read()
        response.release()
        with pytest.raises(HTTPClientError):
            await post(client, server)
        assert len(server.requests) == 2  # the second request was sent once, not twice


async def test_an_answer_that_ends_with_a_reset_connection_is_broken_not_whole(client: Client) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await read_request(reader, server)
        writer.write(b'HTTP/1.1 200 OK\r\n\r\n{"trunc')
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # an RST, not an orderly end

    async with serving(reset) as server:
        response = await post(client, server)
        with pytest.raises(HTTPClientError):
            await response.read()
        response.close()


async def test_closing_the_client_is_no_end_of_an_answer_delimited_by_its_connection(client: Client) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await read_request(reader, server)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(30)

    async with serving(slow) as server:
        response = await post(client, server)
        reading = asyncio.create_task(response.read())
        await asyncio.sleep(0.05)
        await client.close()
        with pytest.raises(HTTPClientError):
            await reading
        with pytest.raises(HTTPClientError, match="closed"):
            await post(client, server)


async def test_a_switch_of_protocols_is_a_client_error(client: Client) -> None:
    async def upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await read_request(reader, server)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\nxx")
        await writer.drain()
        await asyncio.sleep(30)

    async with serving(upgrade) as server:
        with pytest.raises(http1.MalformedAnswer, match="not HTTP"):
            await post(client, server)


async def test_what_the_url_and_the_headers_say_is_sent_once(client: Client) -> None:
    async with serving(keep_answering) as server:
        url = f"http://us%40er:p%3Ass@127.0.0.1:{server.port}/v1/x"
        from_url = [b"authorization: Basic " + base64.b64encode(b"us@er:p:ss"), b"accept-encoding: identity"]
        given = encode_headers(
            {"Authorization": "Bearer k", "Host": "api.example", "Accept-Encoding": "gzip"}
        )
        for headers, expected in (
            (b"", from_url),
            (given, [b"authorization: Bearer k", b"host: api.example"]),
        ):
            response = await client.request("POST", url, body=b"{}", headers=headers)
            await response.read()
            response.release()
            lines = server.requests[-1].split(b"\r\n\r\n")[0].split(b"\r\n")
            names = [line.split(b":")[0] for line in lines[1:]]
            assert len(names) == len(set(names))  # no header twice
            assert set(expected) <= set(lines)


def test_a_header_named_twice_in_different_cases_is_sent_once_the_later() -> None:
    assert encode_headers({"content-type": "application/json", "Content-Type": "text/plain"}) == (
        b"content-type: text/plain\r\n"
    )
