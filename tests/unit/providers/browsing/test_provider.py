"""The browsing pipeline with a scripted base model, a scripted search and a real loopback site."""

from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path

import pytest

from chatgate.config import BrowsingDeployment, Price
from chatgate.protocol.messages import text_of
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.base import (
    Accepted,
    Bound,
    Citations,
    Finished,
    Plan,
    ProviderEvent,
    TextDelta,
    UsageReport,
    collect,
)
from chatgate.providers.browsing.extract import Document
from chatgate.providers.browsing.index import LocalIndex
from chatgate.providers.browsing.provider import BrowsingProvider
from chatgate.providers.browsing.search import LocalIndexBackend, SearchFailed, SearchHit
from chatgate.providers.web.fetch import GuardedFetcher
from chatgate.services.auth import MASTER
from chatgate.services.catalogue import ModelRegistry, Route
from chatgate.services.chat import ChatService
from chatgate.services.metering import Caller, Metering
from tests.unit.fakes import CountingLimiter, FakeStore, Refusals
from tests.website import Page, Site, website

FACT = "The lighthouse keeper of Velmora Island is Ostrander Quill."


class Base:
    """A base model that writes a search query, then answers; it records the requests it was given."""

    def __init__(self, answer: str = "Ostrander Quill keeps it [1].") -> None:
        self.answer = answer
        self.requests: list[ChatCompletionRequest] = []

    async def start(self) -> None:
        return None

    def prepare(self, request: ChatCompletionRequest) -> Plan:
        return Plan(request, Bound(10_000, request.token_limit or 100))

    async def run(self, plan: Plan) -> AsyncGenerator[ProviderEvent, None]:
        request = plan.request
        self.requests.append(request)
        text = "Velmora lighthouse keeper" if len(self.requests) == 1 else self.answer
        prompt = 10 * len(self.requests)
        yield Accepted(prompt)
        for word in text.split(" "):
            yield TextDelta(word if word == text.split(" ")[0] else " " + word, tokens=1)
        yield Finished("stop", prompt, len(text.split(" ")))

    def stats(self) -> dict[str, int]:
        return {}

    def health(self) -> list[dict[str, object]]:
        return []

    async def aclose(self) -> None:
        return None


class Search:
    def __init__(self, hits: list[SearchHit], fail: bool = False) -> None:
        self.hits = hits
        self.fail = fail
        self.queries: list[str] = []

    async def search(self, query: str, limit: int) -> list[SearchHit]:
        self.queries.append(query)
        if self.fail:
            raise SearchFailed("down")
        return self.hits[:limit]


def deployment(**extra: object) -> BrowsingDeployment:
    return BrowsingDeployment.model_validate(
        {
            "kind": "browsing",
            "base": "base",
            "search": {"backend": "local_index"},
            "fetch_timeout": 1.0,
            **extra,
        }
    )


def request(**extra: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {
            "model": "base-browsing",
            "messages": [{"role": "user", "content": "Who keeps the Velmora lighthouse?"}],
            **extra,
        }
    )


@pytest.fixture
def site() -> Iterator[Site]:
    pages: dict[str, Page] = {
        "/velmora": Page(
            f"<html><head><title>Velmora Island</title></head><body><article><h1>Velmora Island</h1>"
            f"<p>Velmora Island is a small island in the northern sea, known for its cliffs.</p>"
            f"<p>{FACT}</p><p>He has kept the light burning for thirty years.</p></article></body></html>".encode()
        ),
        "/bread": Page(
            b"<html><head><title>Bread</title></head><body><p>Bread needs flour.</p></body></html>"
        ),
        "/slow": Page(b"<p>slow</p>", pieces=50, delay=0.2),
        "/huge": Page(b"<p>" + b"x" * 65536, repeat=1000),
        "/binary": Page(bytes(range(256)) * 100, "application/octet-stream"),
    }
    with website(pages) as running:
        pages["/secret"] = Page(b"<p>The secret is 42.</p>")
        pages["/to-secret"] = Page(b"", status=302, location=running.url("/secret", host="localhost"))
        yield running


OPEN: list[BrowsingProvider] = []


@pytest.fixture(autouse=True)
async def close_providers() -> AsyncIterator[None]:
    yield
    while OPEN:
        await OPEN.pop().aclose()


def provider(site: Site, search: Search, base: Base, **extra: object) -> BrowsingProvider:
    fetcher = GuardedFetcher(allow_hosts=["127.0.0.1"], timeout=1.0, max_bytes=200_000)
    OPEN.append(BrowsingProvider(deployment(**extra), base, "base", search, fetcher))
    return OPEN[-1]


def hits(site: Site, *paths: str) -> list[SearchHit]:
    return [SearchHit(site.url(p), p.strip("/").title()) for p in paths]


async def test_answers_from_the_page_with_a_cited_link_and_all_usage(site: Site) -> None:
    search = Search(hits(site, "/to-secret", "/slow", "/huge", "/binary", "/velmora", "/bread"))
    base = Base()
    browsing = provider(site, search, base, max_pages=6)
    plan = browsing.prepare(request())
    events = [e async for e in browsing.run(plan)]
    accepted = [e for e in events if isinstance(e, Accepted)]
    assert [a.prompt_tokens for a in accepted] == [10, 30]  # the query step, then the answer step
    assert search.queries == ["Velmora lighthouse keeper", "Who keeps the Velmora lighthouse?"]
    assert site.hits.get("/secret") is None  # the redirect to localhost was refused
    answer_prompt = text_of(base.requests[1].messages[0])
    assert FACT in answer_prompt and "[1] Velmora Island" in answer_prompt
    assert "secret" not in answer_prompt
    completion = await collect(_replay(events))
    text = completion.choices[0].text
    url = site.url("/velmora")
    assert text == f"Ostrander Quill keeps it [1].\n\nSources:\n[1] [Velmora Island]({url})"
    (annotation,) = completion.choices[0].annotations or []
    citation = annotation.url_citation
    assert text[citation.start_index : citation.end_index] == f"[Velmora Island]({url})"
    assert (citation.url, citation.title) == (url, "Velmora Island")
    # Usage covers both steps: 10 + 20 prompt tokens; 3 query words and 5 answer words.
    assert (completion.prompt_tokens, completion.completion_tokens) == (30, 3 + 5)
    assert plan.bound.prompt_tokens >= 30 and plan.bound.completion_tokens >= 8
    assert isinstance(events[-1], UsageReport)


async def test_lists_every_source_when_none_is_cited_and_says_so_when_nothing_is_found(site: Site) -> None:
    browsing = provider(site, Search(hits(site, "/velmora", "/bread")), Base("No numbers here."))
    completion = await collect(browsing.run(browsing.prepare(request())))
    text = completion.choices[0].text
    assert "[1] [Velmora Island]" in text and "[2] [Bread]" in text
    assert len(completion.choices[0].annotations or []) == 2
    base = Base("I found nothing.")
    nothing = provider(site, Search([], fail=True), base)
    completion = await collect(nothing.run(nothing.prepare(request())))
    assert completion.choices[0].text == "I found nothing."
    assert completion.choices[0].annotations is None
    assert "no sources" in text_of(base.requests[1].messages[0])


async def test_local_index_hits_need_no_fetch(tmp_path: Path, site: Site) -> None:
    index = LocalIndex(tmp_path / "index.db")
    index.add(Document("file:///notes/velmora.md", "Velmora notes", FACT))
    index.add(Document("file:///notes/bread.md", "Bread", "Bread needs flour and water."))
    base = Base()
    fetcher = GuardedFetcher(connector=_no_connections)
    browsing = BrowsingProvider(deployment(), base, "base", LocalIndexBackend(tmp_path / "index.db"), fetcher)
    completion = await collect(browsing.run(browsing.prepare(request())))
    await browsing.aclose()
    assert "[1] [Velmora notes](file:///notes/velmora.md)" in completion.choices[0].text
    assert FACT in text_of(base.requests[1].messages[0])


async def test_the_chat_service_puts_annotations_on_the_message(site: Site) -> None:
    browsing = provider(site, Search(hits(site, "/velmora")), Base())
    route = Route("base-browsing", "me", 0, browsing, "fp", Price())
    registry = ModelRegistry([route], {})
    chat = ChatService(registry, Metering(FakeStore(), CountingLimiter(), Refusals(), owner="me"))
    answer, _ = await chat.complete(Caller(MASTER, "req"), request())
    message = answer.model_dump(mode="json")["choices"][0]["message"]
    (annotation,) = message["annotations"]
    assert annotation["type"] == "url_citation"
    span = annotation["url_citation"]
    assert (
        message["content"][span["start_index"] : span["end_index"]]
        == f"[Velmora Island]({site.url('/velmora')})"
    )
    assert answer.usage is not None and answer.usage.prompt_tokens == 30
    stream, _ = await chat.stream(Caller(MASTER, "req2"), request(stream=True))
    chunks = [chunk.model_dump(mode="json") async for chunk in stream]
    assert all("annotations" not in c["delta"] for chunk in chunks for c in chunk["choices"])
    streamed = "".join(c["delta"].get("content") or "" for chunk in chunks for c in chunk["choices"])
    assert streamed == message["content"]


async def test_refuses_what_it_cannot_do(site: Site) -> None:
    browsing = provider(site, Search([]), Base())
    with pytest.raises(Exception, match="one choice"):
        browsing.prepare(request(n=2))


async def _no_connections(ip: str, port: int, timeout: float | None) -> object:
    pytest.fail(f"tried to connect to {ip}:{port}")


async def _replay(events: list[ProviderEvent]) -> AsyncGenerator[ProviderEvent, None]:
    for event in events:
        yield event


def test_citations_event_is_exported() -> None:
    assert Citations([]).index == 0
