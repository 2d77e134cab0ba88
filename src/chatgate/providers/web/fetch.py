"""An HTTP(S) GET that cannot be pointed at the server's own network (SSRF guard).

Every hop is checked before any connection: only http and https; the host is resolved once, and if
any of its addresses is private, loopback, link-local, multicast, reserved, shared or a cloud
metadata address (also in IPv4-mapped, 6to4 and NAT64 forms) the fetch is refused, unless the host
as written is allow-listed. The connection goes to the vetted address itself (no second lookup, so
no DNS rebinding) while the Host header and TLS SNI keep the original name. Redirects are followed
by hand and each one is checked again. The whole fetch is bounded in time and in bytes; no cookies,
no proxies from the environment, no credentials are ever sent.
"""

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx
from httpcore import AnyIOBackend, AsyncNetworkBackend, AsyncNetworkStream

from chatgate.providers.redact import without_addresses

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# What httpcore raises for a network or protocol failure.
TRANSPORT_ERRORS = (
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.ProxyError,
    OSError,
)

# Connects to an address that has already been vetted: (ip, port, connect timeout) -> stream.
Connector = Callable[[str, int, float | None], Awaitable[AsyncNetworkStream]]

REDIRECTS = frozenset({301, 302, 303, 307, 308})
METADATA = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack...
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
    }
)
SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT
NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


class FetchError(Exception):
    """A fetch that failed. Its message may be shown to the caller: it never holds an address a
    name resolved to, only the host as the URL gave it."""

    def __init__(self, message: str, url: str) -> None:
        super().__init__(without_addresses(message, keep=_host_of(url)))
        self.url = url


class FetchRefused(FetchError):
    """A forbidden scheme, address or host, or too many redirects; refused before connecting."""


class FetchTooLarge(FetchError):
    """The body is over the byte cap."""


class FetchFailed(FetchError):
    """No good answer: a connection error, a time-out, a non-2xx status, a broken response."""


@dataclass(frozen=True)
class Fetched:
    url: str  # the final URL, after redirects
    status: int
    content_type: str  # the header's value, "" when absent
    body: bytes


def is_forbidden_address(ip: IPAddress) -> bool:
    """Whether ``ip`` is anything but an ordinary public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_forbidden_address(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            return is_forbidden_address(ip.sixtofour)
        if ip in NAT64:
            return is_forbidden_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip in NAT64_LOCAL or ip.teredo is not None:
            return True
    return (
        ip in METADATA
        or (isinstance(ip, ipaddress.IPv4Address) and ip in SHARED)
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


async def default_connect(ip: str, port: int, timeout: float | None) -> AsyncNetworkStream:
    return await AnyIOBackend().connect_tcp(ip, port, timeout=timeout)


class _GuardedBackend(AsyncNetworkBackend):
    """httpcore's network layer with the address check in front of every connection."""

    def __init__(self, fetcher: "GuardedFetcher") -> None:
        self._fetcher = fetcher

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> AsyncNetworkStream:
        addresses = await self._fetcher.vet(host, port)
        last: Exception | None = None
        for ip in addresses:
            try:
                return await self._fetcher.connector(str(ip), port, timeout)
            except (OSError, httpcore.ConnectError) as exc:
                last = exc
        # Not the addresses tried, nor the OS's message (which names them): the host as given.
        raise httpcore.ConnectError(f"cannot connect to {host}:{port}") from last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not fetched")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class GuardedFetcher:
    def __init__(
        self,
        *,
        allow_hosts: Iterable[str] = (),
        max_bytes: int = 5_000_000,
        timeout: float = 10.0,
        max_redirects: int = 5,
        user_agent: str = "chatgate/0.1",
        connector: Connector | None = None,
    ) -> None:
        self.allow_hosts = frozenset(_host_key(h) for h in allow_hosts if h.strip())
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.user_agent = user_agent
        self.connector: Connector = connector or default_connect
        self._pool = httpcore.AsyncConnectionPool(
            network_backend=_GuardedBackend(self), max_connections=20, keepalive_expiry=5.0, retries=0
        )

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def vet(self, host: str, port: int) -> list[IPAddress]:
        """The addresses ``host`` may be reached at; FetchRefused if any of them is forbidden."""
        key = _host_key(host)
        literal = _literal(key)
        if literal is not None:
            addresses = [literal]
        else:
            addresses = await self._resolve(key, port)
        if key in self.allow_hosts:
            return addresses
        for ip in addresses:
            if is_forbidden_address(ip):
                where = "is" if literal is not None else "resolves to"
                raise FetchRefused(f"{host} {where} a private, loopback or reserved address", host)
        return addresses

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}") from exc
        found: list[IPAddress] = []
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if ip not in found:
                found.append(ip)
        if not found:
            raise httpcore.ConnectError(f"{host} has no address")
        return found

    async def fetch(self, url: str, *, max_bytes: int | None = None, timeout: float | None = None) -> Fetched:
        """GET ``url``, following checked redirects. Raises a FetchError subclass on any problem."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        seconds = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(seconds):
                return await self._follow(url, limit, seconds)
        except TimeoutError as exc:
            raise FetchFailed(f"no complete answer within {seconds:g}s", url) from exc

    async def _follow(self, url: str, limit: int, seconds: float) -> Fetched:
        current = _parse(url, url)
        for _ in range(self.max_redirects + 1):
            where = str(current)
            if current.scheme not in ("http", "https"):
                raise FetchRefused(f"only http and https are fetched, not {current.scheme!r}", where)
            if not current.host:
                raise FetchRefused("the URL has no host", where)
            request = httpcore.Request(
                "GET",
                httpcore.URL(
                    scheme=current.raw_scheme,
                    host=current.raw_host,
                    port=current.port,
                    target=current.raw_path,
                ),
                headers=[
                    (b"Host", current.netloc),
                    (b"User-Agent", self.user_agent.encode()),
                    (
                        b"Accept",
                        b"text/html,application/xhtml+xml,text/plain,application/pdf;q=0.9,*/*;q=0.5",
                    ),
                    (b"Accept-Encoding", b"identity"),
                ],
                extensions={
                    "timeout": {"connect": seconds, "read": seconds, "write": seconds, "pool": seconds}
                },
            )
            try:
                response = await self._pool.handle_async_request(request)
            except FetchError:
                raise
            except httpcore.TimeoutException as exc:
                raise FetchFailed("timed out", where) from exc
            except TRANSPORT_ERRORS as exc:
                raise FetchFailed(f"could not fetch: {exc}", where) from exc
            try:
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers}
                if response.status in REDIRECTS and "location" in headers:
                    current = _parse(current.join(headers["location"]), where)
                    continue
                if not 200 <= response.status < 300:
                    raise FetchFailed(f"status {response.status}", where)
                body = await self._read(response, headers, limit, where)
                return Fetched(where, response.status, headers.get("content-type", ""), body)
            finally:
                await response.aclose()
        raise FetchRefused(f"more than {self.max_redirects} redirects", url)

    async def _read(
        self, response: httpcore.Response, headers: dict[str, str], limit: int, url: str
    ) -> bytes:
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise FetchTooLarge(f"declared {declared} bytes, over the cap of {limit}", url)
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_stream():
                size += len(chunk)
                if size > limit:
                    raise FetchTooLarge(f"over the cap of {limit} bytes", url)
                chunks.append(chunk)
        except httpcore.TimeoutException as exc:
            raise FetchFailed("timed out reading the body", url) from exc
        except TRANSPORT_ERRORS as exc:
            raise FetchFailed(f"the body broke off: {exc}", url) from exc
        return b"".join(chunks)


def _host_of(url: str) -> str:
    """The host a URL (or a bare host) names, as written."""
    try:
        return httpx.URL(url).host or url
    except (httpx.InvalidURL, ValueError, TypeError):
        return url


def _host_key(host: str) -> str:
    """A host as compared with the allow-list: lower case, no brackets, no trailing dot."""
    return host.strip().lower().strip("[]").rstrip(".")


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _parse(url: str | httpx.URL, where: str) -> httpx.URL:
    try:
        return httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise FetchRefused(f"not a valid URL: {exc}", where) from exc
