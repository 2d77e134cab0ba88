"""A browsing model: the base model writes a search query, chatgate searches and reads, the base answers.

Steps, all metered: (1) the base model turns the conversation into a search query (the user's last
message is searched as well, so a weak model cannot derail the search); (2) every query is searched
and the top pages are fetched through the guarded fetcher and read, concurrently and within the fetch
time-out; (3) the passages closest to the question that fit the budget become numbered sources;
(4) the base model answers from them, streamed through, followed by a "Sources:" list of markdown
links, which the non-streamed message also carries as ``url_citation`` annotations.

The whole request is reserved before the first step runs (so before anything is searched): its
bound is the base model's for the query step plus its bound for the longest answer prompt the
sources' budget allows. The request is accepted once the base model accepts the query step, and
again (with the prompt so far) once it accepts the answer step. Reading pages is heavy work.
"""

import asyncio
import logging
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from chatgate.config import BrowsingDeployment
from chatgate.errors import NotImplementedFeature
from chatgate.protocol.messages import text_of
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.protocol.responses import Annotation, FinishReason, UrlCitation
from chatgate.providers.base import (
    Accepted,
    AnyProvider,
    Citations,
    Finished,
    Plan,
    ProviderEvent,
    TextDelta,
    UsageReport,
    collect,
    replay,
)
from chatgate.providers.browsing.extract import Document, extract
from chatgate.providers.browsing.passages import Passage, budget_bytes, rank, select, split
from chatgate.providers.browsing.search import SearchBackend, SearchHit
from chatgate.providers.heavy import HeavyWork
from chatgate.providers.web.fetch import FetchError, GuardedFetcher

log = logging.getLogger(__name__)

MAX_SOURCES = 8
MAX_TITLE = 100
MAX_URL = 500
SOURCE_HEADER_BYTES = 4 * MAX_TITLE + MAX_URL + 32  # "[n] title\nURL: url\n" at most, in bytes
CITED = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")

QUERY_INSTRUCTIONS = (
    "You write web search queries. Reply with one short search query (a few keywords) that would find "
    "the answer to the user's last question. Reply with the query only."
)
ANSWER_INSTRUCTIONS = (
    "Answer the user's question using the numbered sources below, found by a web search just now. "
    "Use the facts in the sources. Cite the source of each fact by its number in square brackets, "
    "like [1]. If the sources do not answer the question, say so."
)
NO_SOURCES = (
    "A web search found no sources for the user's question. Say that no sources were found, then "
    "answer briefly from what you know."
)


@dataclass(frozen=True)
class Source:
    number: int
    url: str
    title: str
    passages: list[Passage]


@dataclass(frozen=True)
class BrowsingPlan(Plan):
    answer_limit: int


class BrowsingProvider:
    def __init__(
        self,
        deployment: BrowsingDeployment,
        base: AnyProvider,
        base_name: str,
        search: SearchBackend,
        fetcher: GuardedFetcher,
        heavy: HeavyWork | None = None,
    ) -> None:
        self.heavy = heavy or HeavyWork(None, slots=2)
        self.deployment = deployment
        self.base = base
        self.base_name = base_name
        self.search = search
        self.fetcher = fetcher
        self.in_flight = 0

    async def start(self) -> None:
        return None  # the base model is a route of its own, started (and closed) as such

    async def aclose(self) -> None:
        await self.fetcher.aclose()

    def stats(self) -> dict[str, int]:
        return {"in_flight": self.in_flight}

    def health(self) -> list[dict[str, object]]:
        return [{"deployment": f"browsing:{self.base_name}", "up": True, **self.stats()}]

    def prepare(self, request: ChatCompletionRequest) -> BrowsingPlan:
        if request.n not in (None, 1):
            raise NotImplementedFeature("Browsing models give one choice (n=1).", param="n")
        if request.tools or request.functions:
            raise NotImplementedFeature("Browsing models do not call tools.", param="tools")
        answer_limit = request.token_limit or self.deployment.max_tokens
        most = self._answer_request(request, _placeholder(self.deployment.passage_tokens), answer_limit)
        bound = self.base.prepare(self._query_request(request)).bound + self.base.prepare(most).bound
        return BrowsingPlan(request, bound, answer_limit=answer_limit)

    async def run(self, plan: BrowsingPlan) -> AsyncGenerator[ProviderEvent, None]:
        request = plan.request
        self.in_flight += 1
        try:
            steps = self.base.run(self.base.prepare(self._query_request(request)))
            events: list[ProviderEvent] = []
            async for event in steps:
                if isinstance(event, Accepted) and not events:
                    yield event  # the base model took the query step: the search is under way
                events.append(event)
            written = await collect(replay(events))
            question = _question(request)
            model_query = _clean_query(written.choices[0].text if written.choices else "")
            queries = list(dict.fromkeys(q for q in (model_query, question[:300]) if q))
            documents = await self._read(queries)
            sources = _sources(documents, f"{question} {model_query}", self.deployment.passage_tokens)
            async for answered in self._answer(
                request, sources, plan.answer_limit, written.prompt_tokens, written.completion_tokens
            ):
                yield answered
        finally:
            self.in_flight -= 1

    def _query_request(self, request: ChatCompletionRequest) -> ChatCompletionRequest:
        lines = [
            f"{m.role}: {text_of(m)[:500]}" for m in request.messages[-6:] if m.role in ("user", "assistant")
        ]
        return ChatCompletionRequest.model_validate(
            {
                "model": self.base_name,
                "messages": [
                    {"role": "system", "content": QUERY_INSTRUCTIONS},
                    {"role": "user", "content": "\n".join(lines) + "\n\nThe search query:"},
                ],
                "max_tokens": self.deployment.query_tokens,
                "temperature": 0,
            }
        )

    def _answer_request(
        self, request: ChatCompletionRequest, sources: str, limit: int
    ) -> ChatCompletionRequest:
        system = {
            "role": "system",
            "content": f"{ANSWER_INSTRUCTIONS}\n\n{sources}" if sources else NO_SOURCES,
        }
        messages = [system, *(m.model_dump(mode="json", exclude_none=True) for m in request.messages)]
        return ChatCompletionRequest.model_validate(
            {
                **request.model_dump(mode="json", exclude_none=True, by_alias=True),
                "model": self.base_name,
                "messages": messages,
                "max_tokens": limit,
                "max_completion_tokens": None,
                "n": None,
                "web_search_options": None,
            }
        )

    async def _read(self, queries: list[str]) -> list[Document]:
        """Search every query, then fetch and read the top pages; whatever fails is left out."""
        limit = self.deployment.max_results
        found = await asyncio.gather(*(self.search.search(q, limit) for q in queries), return_exceptions=True)
        hits: dict[str, SearchHit] = {}
        held: dict[str, list[str]] = {}  # the local index's passages, per URL
        for result in _interleave([r for r in found if isinstance(r, list)]):
            hits.setdefault(result.url, result)
            if result.text is not None and result.text not in held.setdefault(result.url, []):
                held[result.url].append(result.text)
        for failure in (r for r in found if isinstance(r, BaseException)):
            log.warning("search failed: %s", failure)
        documents = [Document(url, hits[url].title, "\n\n".join(texts)) for url, texts in held.items()]
        wanted = [h for h in hits.values() if h.text is None][: self.deployment.max_pages]
        tasks = [asyncio.create_task(self._page(hit)) for hit in wanted]
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=self.deployment.fetch_timeout + 2)
            for task in pending:
                task.cancel()
            for task in tasks:
                if task in done and task.exception() is None and (document := task.result()) is not None:
                    documents.append(document)
        return documents

    async def _page(self, hit: SearchHit) -> Document | None:
        try:
            fetched = await self.fetcher.fetch(hit.url)
        except FetchError as exc:
            log.info("skipped %s: %s: %s", hit.url, type(exc).__name__, exc)
            return None
        document = await self.heavy.run(extract, fetched.url, fetched.body, fetched.content_type)
        if document is None:
            return None
        # Cite the page as the search result named it, with the title it gave when the page has none.
        return Document(hit.url, document.title or hit.title, document.text)

    async def _answer(
        self,
        request: ChatCompletionRequest,
        sources: list[Source],
        limit: int,
        spent_prompt: int,
        spent_completion: int,
    ) -> AsyncGenerator[ProviderEvent, None]:
        answer_request = self._answer_request(request, _render(sources), limit)
        events = self.base.run(self.base.prepare(answer_request))
        prompt, completion = 0, 0  # the base model's counts, as it reports or estimates them
        reason: FinishReason = "stop"
        pieces: list[str] = []
        try:
            async for event in events:
                if isinstance(event, Accepted):
                    prompt = event.prompt_tokens
                    yield Accepted(spent_prompt + prompt, event.system_fingerprint)
                elif isinstance(event, TextDelta) and event.index == 0:
                    pieces.append(event.text)
                    yield event
                elif isinstance(event, Finished) and event.index == 0:
                    reason, completion = event.reason, event.completion_tokens
                elif isinstance(event, UsageReport):
                    prompt, completion = event.prompt_tokens, event.completion_tokens
        finally:
            await events.aclose()
        answer = "".join(pieces)
        section, annotations = _sources_section(answer, sources)
        if section:
            yield TextDelta(section)
            yield Citations(annotations)
        total_prompt, total_completion = spent_prompt + prompt, spent_completion + completion
        yield Finished(reason, total_prompt, total_completion)
        yield UsageReport(total_prompt, total_completion)


def _question(request: ChatCompletionRequest) -> str:
    users = [text_of(m) for m in request.messages if m.role == "user"]
    return " ".join((users[-1] if users else "").split())


def _clean_query(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    query = lines[0] if lines else ""
    query = re.sub(r"^(search query|query)\s*:\s*", "", query, flags=re.IGNORECASE)
    return query.strip(" \"'`*")[:200]


def _interleave(lists: list[list[SearchHit]]) -> list[SearchHit]:
    """The first result of every list, then the second of every list..."""
    merged: list[SearchHit] = []
    for rank_ in range(max((len(items) for items in lists), default=0)):
        merged.extend(items[rank_] for items in lists if rank_ < len(items))
    return merged


def _sources(documents: list[Document], query: str, budget_tokens: int) -> list[Source]:
    candidates = [d for d in documents if len(d.url) <= MAX_URL]
    chosen = select(rank([p for d in candidates for p in split(d)], query), budget_tokens)
    grouped: dict[str, list[Passage]] = {}
    for passage in chosen:
        if passage.document.url in grouped or len(grouped) < MAX_SOURCES:
            grouped.setdefault(passage.document.url, []).append(passage)
    return [
        Source(
            number,
            url,
            _clean_title(passages[0].document.title or url),
            sorted(passages, key=lambda p: p.position),
        )
        for number, (url, passages) in enumerate(grouped.items(), start=1)
    ]


def _clean_title(title: str) -> str:
    cleaned = " ".join(title.replace("[", "(").replace("]", ")").split())
    return cleaned[:MAX_TITLE] or "untitled"


def _render(sources: list[Source]) -> str:
    blocks = []
    for source in sources:
        body = "\n".join(p.text for p in source.passages)
        blocks.append(f"[{source.number}] {source.title}\nURL: {source.url}\n{body}")
    return "\n\n".join(blocks)


def _placeholder(budget_tokens: int) -> str:
    """Sources as long (in bytes) as any the budget lets through: for the up-front estimate."""
    return "x" * (budget_bytes(budget_tokens) + MAX_SOURCES * SOURCE_HEADER_BYTES)


def _link_target(url: str) -> str:
    return url.replace(" ", "%20").replace("(", "%28").replace(")", "%29")


def _sources_section(answer: str, sources: list[Source]) -> tuple[str, list[Annotation]]:
    """The "Sources:" list after the answer, and an annotation for each link in it."""
    if not sources:
        return "", []
    numbers = {int(n) for group in CITED.findall(answer) for n in group.split(",")}
    listed = [s for s in sources if s.number in numbers] or sources
    section = "\n\nSources:"
    annotations: list[Annotation] = []
    for source in listed:
        section += f"\n[{source.number}] "
        link = f"[{source.title}]({_link_target(source.url)})"
        start = len(answer) + len(section)
        section += link
        annotations.append(
            Annotation(
                url_citation=UrlCitation(
                    start_index=start, end_index=start + len(link), url=source.url, title=source.title
                )
            )
        )
    return section, annotations
