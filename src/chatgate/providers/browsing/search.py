"""Search backends behind one small interface: SearxNG's JSON API, Brave's web search, the local index.

The backends are the operator's own services, reached with the shared HTTP client; the pages they
point to are fetched only through the guarded fetcher.
"""

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from chatgate.config import BraveSearch, LocalIndexSearch, SearxngSearch
from chatgate.providers.browsing.index import LocalIndex

log = logging.getLogger(__name__)


class SearchFailed(Exception):
    """The backend did not answer usefully; the browsing model answers without its results."""


@dataclass(frozen=True)
class SearchHit:
    url: str
    title: str
    snippet: str = ""
    text: str | None = None  # the passage itself, when the backend holds it (the local index)


class SearchBackend(Protocol):
    async def search(self, query: str, limit: int) -> list[SearchHit]: ...


class SearxngBackend:
    def __init__(self, config: SearxngSearch, http: httpx.AsyncClient) -> None:
        self.config = config
        self._http = http
        self._url = config.base_url.rstrip("/") + "/search"

    async def search(self, query: str, limit: int) -> list[SearchHit]:
        params = {"q": query, "format": "json"}
        if self.config.categories:
            params["categories"] = self.config.categories
        if self.config.language:
            params["language"] = self.config.language
        body = await _get_json(self._http, self._url, params, {}, self.config.timeout)
        results = body.get("results") if isinstance(body, dict) else None
        return _hits(results or [], "content", limit)


class BraveBackend:
    def __init__(self, config: BraveSearch, http: httpx.AsyncClient) -> None:
        self.config = config
        self._http = http

    async def search(self, query: str, limit: int) -> list[SearchHit]:
        key = self.config.api_key()
        if not key:
            raise SearchFailed(f"{self.config.api_key_env} is not set")
        headers = {"accept": "application/json", "x-subscription-token": key}
        params = {"q": query, "count": str(min(limit, 20))}
        body = await _get_json(self._http, self.config.base_url, params, headers, self.config.timeout)
        web = body.get("web") if isinstance(body, dict) else None
        results = web.get("results") if isinstance(web, dict) else None
        return _hits(results or [], "description", limit)


class LocalIndexBackend:
    def __init__(self, path: Path) -> None:
        self.index = LocalIndex(path)

    async def search(self, query: str, limit: int) -> list[SearchHit]:
        found = await asyncio.to_thread(self.index.search, query, limit * 3)
        return [SearchHit(h.url, h.title, h.text[:300], h.text) for h in found]


def backend(
    config: LocalIndexSearch | SearxngSearch | BraveSearch, http: httpx.AsyncClient, index_path: Path
) -> SearchBackend:
    if isinstance(config, SearxngSearch):
        return SearxngBackend(config, http)
    if isinstance(config, BraveSearch):
        return BraveBackend(config, http)
    return LocalIndexBackend(config.path or index_path)


async def _get_json(
    http: httpx.AsyncClient, url: str, params: dict[str, str], headers: dict[str, str], timeout: float
) -> Any:
    try:
        response = await http.get(url, params=params, headers=headers, timeout=timeout)
        response.raise_for_status()
        return response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise SearchFailed(f"search at {url} failed: {type(exc).__name__}: {exc}") from exc


def _hits(results: list[Any], snippet_field: str, limit: int) -> list[SearchHit]:
    hits: list[SearchHit] = []
    for result in results:
        if not isinstance(result, dict):
            continue
        url = result.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            continue
        title = result.get("title") if isinstance(result.get("title"), str) else url
        snippet = result.get(snippet_field)
        hits.append(SearchHit(url, str(title), snippet if isinstance(snippet, str) else ""))
        if len(hits) >= limit:
            break
    return hits
