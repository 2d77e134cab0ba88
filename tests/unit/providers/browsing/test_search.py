"""The web search backends against loopback peers shaped like their APIs (neither service runs here)."""

import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from chatgate.config import BraveSearch, SearxngSearch
from chatgate.providers.browsing.search import BraveBackend, SearchFailed, SearxngBackend
from tests.website import Page, Site, website

RESULTS = [
    {"url": "https://example.org/a", "title": "A page", "content": "about a", "description": "about a"},
    {"url": "ftp://example.org/b", "title": "not http"},
    {"url": "https://example.org/c", "title": "C page", "content": "about c", "description": "about c"},
]


@pytest.fixture
def site() -> Iterator[Site]:
    with website(
        {
            "/search": Page(json.dumps({"results": RESULTS}).encode(), "application/json"),
            "/brave": Page(json.dumps({"web": {"results": RESULTS}}).encode(), "application/json"),
            "/broken": Page(b"<html>", "text/html", status=500),
        }
    ) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


async def test_searxng_results_become_hits(site: Site, http: httpx.AsyncClient) -> None:
    backend = SearxngBackend(SearxngSearch(backend="searxng", base_url=site.url(""), language="en"), http)
    hits = await backend.search("velmora lighthouse", 5)
    assert [(h.url, h.title, h.snippet) for h in hits] == [
        ("https://example.org/a", "A page", "about a"),
        ("https://example.org/c", "C page", "about c"),
    ]
    assert (await backend.search("x", 1))[0].url == "https://example.org/a"


async def test_brave_sends_its_key_and_reads_web_results(
    site: Site, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = BraveSearch(backend="brave", base_url=site.url("/brave"), api_key_env="TEST_BRAVE_KEY")
    with pytest.raises(SearchFailed, match="TEST_BRAVE_KEY"):
        await BraveBackend(config, http).search("q", 5)
    monkeypatch.setenv("TEST_BRAVE_KEY", "brave-secret")
    hits = await BraveBackend(config, http).search("velmora", 5)
    assert [h.url for h in hits] == ["https://example.org/a", "https://example.org/c"]
    assert site.headers["/brave"]["x-subscription-token"] == "brave-secret"


async def test_a_failing_search_service_is_a_search_failure(site: Site, http: httpx.AsyncClient) -> None:
    config = BraveSearch(backend="brave", base_url=site.url("/broken"), api_key_env="HOME")
    with pytest.raises(SearchFailed, match="500"):
        await BraveBackend(config, http).search("q", 5)
