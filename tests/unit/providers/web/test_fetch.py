"""The guarded fetcher against a real loopback site; a connect attempt to anything forbidden fails the test."""

import ipaddress
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from httpcore import AsyncNetworkStream

from chatgate.providers.web.fetch import (
    FetchFailed,
    FetchRefused,
    FetchTooLarge,
    GuardedFetcher,
    default_connect,
    is_forbidden_address,
)
from tests.e2e import infra
from tests.website import Page, Site, website


class Connections:
    """The connector seam, wrapped: loopback connects to the test site go through; anything else fails."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.made: list[tuple[str, int]] = []

    async def __call__(self, ip: str, port: int, timeout: float | None) -> AsyncNetworkStream:
        if (ip, port) != ("127.0.0.1", self.site.port):
            pytest.fail(f"the fetcher tried to connect to {ip}:{port}")
        self.made.append((ip, port))
        return await default_connect(ip, port, timeout)


@pytest.fixture
def site() -> Iterator[Site]:
    with website() as running:
        yield running


@pytest.fixture
async def connections(site: Site) -> Connections:
    return Connections(site)


@pytest.fixture
async def fetcher(connections: Connections) -> AsyncIterator[GuardedFetcher]:
    guarded = GuardedFetcher(allow_hosts=["127.0.0.1"], timeout=2.0, max_bytes=100_000, connector=connections)
    yield guarded
    await guarded.aclose()


def redirect(to: str) -> Page:
    return Page(b"", status=302, location=to)


async def test_an_allowed_page_is_fetched(
    site: Site, fetcher: GuardedFetcher, connections: Connections
) -> None:
    site.pages["/a"] = Page(b"<p>hello</p>")
    site.pages["/hop"] = redirect("/a")
    got = await fetcher.fetch(site.url("/hop"))
    assert (got.url, got.status, got.body) == (site.url("/a"), 200, b"<p>hello</p>")
    assert got.content_type.startswith("text/html")
    assert connections.made


async def test_loopback_is_refused_without_the_allow_list(site: Site, connections: Connections) -> None:
    site.pages["/a"] = Page(b"secret")
    fetcher = GuardedFetcher(connector=connections)
    with pytest.raises(FetchRefused):
        await fetcher.fetch(site.url("/a"))
    await fetcher.aclose()
    assert connections.made == [] and site.hits == {}


@pytest.mark.parametrize(
    "target",
    [
        "http://localhost:{port}/secret",  # loopback under a name that is not allowed
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::1]:{port}/secret",
        "http://[::ffff:127.0.0.1]:{port}/secret",
        "http://100.64.0.1/",
        "http://0.0.0.0:{port}/secret",
        "ftp://example.com/file",
        "file:///etc/passwd",
    ],
)
async def test_redirects_to_forbidden_places_are_refused(
    site: Site, fetcher: GuardedFetcher, connections: Connections, target: str
) -> None:
    site.pages["/go"] = redirect(target.format(port=site.port))
    site.pages["/secret"] = Page(b"secret")
    with pytest.raises(FetchRefused):
        await fetcher.fetch(site.url("/go"))
    assert site.hits.get("/secret") is None
    assert connections.made == [("127.0.0.1", site.port)]  # the first hop only


async def test_a_name_resolving_to_a_forbidden_address_is_refused(
    site: Site, connections: Connections, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetcher = GuardedFetcher(allow_hosts=["127.0.0.1"], connector=connections)

    async def resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return [ipaddress.ip_address("93.184.215.14"), ipaddress.ip_address("10.1.2.3")]

    monkeypatch.setattr(fetcher, "_resolve", resolve)
    with pytest.raises(FetchRefused) as refused:  # one forbidden address among good ones is enough
        await fetcher.fetch("http://rebind.example/")
    await fetcher.aclose()
    assert connections.made == []
    assert "rebind.example" in str(refused.value)
    assert "10.1.2.3" not in str(refused.value) and "93.184" not in str(refused.value)  # never told


async def test_a_failed_connection_names_the_host_not_the_addresses_it_resolved_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed = infra.free_port()
    fetcher = GuardedFetcher(allow_hosts=["internal.example"], timeout=2.0)

    async def resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return [ipaddress.ip_address("127.0.0.1")]  # an internal service's address, allowed by name

    monkeypatch.setattr(fetcher, "_resolve", resolve)
    with pytest.raises(FetchFailed) as failed:
        await fetcher.fetch(f"http://internal.example:{closed}/")
    await fetcher.aclose()
    assert "internal.example" in str(failed.value)
    assert "127.0.0.1" not in str(failed.value)


async def test_localhost_is_refused_even_when_its_address_is_allowed(
    site: Site, fetcher: GuardedFetcher, connections: Connections
) -> None:
    site.pages["/a"] = Page(b"x")
    with pytest.raises(FetchRefused):
        await fetcher.fetch(site.url("/a", host="localhost"))
    assert connections.made == []


async def test_a_huge_body_stops_at_the_cap(site: Site, fetcher: GuardedFetcher) -> None:
    site.pages["/huge"] = Page(b"x" * 65536, repeat=2000)  # 131 MB, without Content-Length
    site.pages["/declared"] = Page(b"y" * 200_000)
    began = time.monotonic()
    with pytest.raises(FetchTooLarge):
        await fetcher.fetch(site.url("/huge"))
    with pytest.raises(FetchTooLarge):
        await fetcher.fetch(site.url("/declared"))
    assert time.monotonic() - began < 2


async def test_a_slow_body_fails_within_the_timeout(site: Site, fetcher: GuardedFetcher) -> None:
    site.pages["/slow"] = Page(b"drip ", pieces=40, delay=0.2)  # 8 s in all, a byte every 0.2 s
    began = time.monotonic()
    with pytest.raises(FetchFailed):
        await fetcher.fetch(site.url("/slow"), timeout=0.6)
    assert time.monotonic() - began < 1.2


async def test_a_redirect_loop_is_refused_after_the_cap(site: Site, fetcher: GuardedFetcher) -> None:
    site.pages["/loop"] = redirect("/loop")
    with pytest.raises(FetchRefused):
        await fetcher.fetch(site.url("/loop"))
    assert site.hits["/loop"] == fetcher.max_redirects + 1


async def test_errors_and_no_credentials(site: Site, fetcher: GuardedFetcher) -> None:
    site.pages["/gone"] = Page(b"no", status=410)
    with pytest.raises(FetchFailed):
        await fetcher.fetch(site.url("/gone"))
    site.pages["/echo"] = Page(b"ok", "text/plain")
    got = await fetcher.fetch(site.url("/echo").replace("http://", "http://user:pw@"))
    sent = site.headers["/echo"]
    assert got.body == b"ok" and got.content_type == "text/plain"
    assert "authorization" not in sent and "cookie" not in sent and "proxy-authorization" not in sent
    assert sent["host"] == f"127.0.0.1:{site.port}" and sent["accept-encoding"] == "identity"


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
        ("127.0.0.1", True),
        ("10.0.0.1", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("100.64.0.1", True),
        ("169.254.169.254", True),
        ("169.254.1.1", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("255.255.255.255", True),
        ("240.0.0.1", True),
        ("::1", True),
        ("::", True),
        ("fe80::1", True),
        ("fc00::1", True),
        ("fd00:ec2::254", True),
        ("ff02::1", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:8.8.8.8", False),
        ("2002:7f00:1::", True),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::", True),  # 6to4 of 169.254.169.254
        ("64:ff9b::a00:1", True),  # NAT64 of 10.0.0.1
        ("64:ff9b::808:808", False),  # NAT64 of 8.8.8.8
    ],
)
def test_forbidden_addresses(address: str, forbidden: bool) -> None:
    assert is_forbidden_address(ipaddress.ip_address(address)) is forbidden
