"""ChatService against a scripted provider: chunk order, usage, refusals, and early close."""

from collections.abc import AsyncGenerator

import pytest

from chatgate.config import Price
from chatgate.errors import InvalidRequest, ModelNotFound
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.base import Finished, ProviderEvent, Running, Started, TextDelta
from chatgate.services.auth import MASTER
from chatgate.services.catalogue import ModelRegistry, Route
from chatgate.services.chat import Caller, ChatService
from chatgate.services.quota import QuotaService
from chatgate.services.ratelimit import LocalRateLimiter
from chatgate.services.usage import UsageRecorder
from chatgate.storage.database import Database


class ScriptedProvider:
    """Replays a fixed script of events; records whether its stream was closed."""

    def __init__(self, script: list[ProviderEvent]) -> None:
        self.script = script
        self.closed = False

    async def start(self) -> None:
        return None

    async def stream(self, request: ChatCompletionRequest) -> AsyncGenerator[ProviderEvent, None]:
        try:
            for event in self.script:
                yield event
        finally:
            self.closed = True

    def stats(self) -> dict[str, int]:
        return {}

    async def aclose(self) -> None:
        return None


SCRIPT: list[ProviderEvent] = [
    Started(5, 16),
    Running(),
    TextDelta("Hel", tokens=1),
    TextDelta("lo", tokens=1),
    Finished("stop", 5, 2),
]


CALLER = Caller(MASTER, "req_unit")


def service(provider: ScriptedProvider) -> ChatService:
    route = Route("m", "me", 0, provider, "fp_test", Price())
    db = Database("sqlite+aiosqlite:///:memory:")  # never touched: the master key is not metered
    recorder = UsageRecorder(db, flush_seconds=3600)
    return ChatService(ModelRegistry([route], {"alias": "m"}), QuotaService(db), LocalRateLimiter(), recorder)


def request(**extra: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "alias", "messages": [{"role": "user", "content": "hi"}], **extra}
    )


async def test_complete_reports_text_reason_usage_and_the_canonical_name() -> None:
    answer = (await service(ScriptedProvider(SCRIPT)).complete(CALLER, request()))[0]
    assert answer.model == "m"
    assert answer.id.startswith("chatcmpl-")
    assert answer.choices[0].message.content == "Hello"
    assert answer.choices[0].logprobs is None
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.total_tokens == 7


async def test_stream_sends_role_then_content_then_finish_then_usage() -> None:
    chunks = [
        c
        async for c in (
            await service(ScriptedProvider(SCRIPT)).stream(
                CALLER, request(stream=True, stream_options={"include_usage": True})
            )
        )[0]
    ]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == "Hello"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2
    assert len({c.id for c in chunks}) == 1


async def test_stream_without_include_usage_sends_no_usage_chunk() -> None:
    chunks = [
        c async for c in (await service(ScriptedProvider(SCRIPT)).stream(CALLER, request(stream=True)))[0]
    ]
    assert all(c.usage is None and c.choices for c in chunks)


async def test_closing_the_stream_early_closes_the_provider() -> None:
    provider = ScriptedProvider(SCRIPT)
    chunks = (await service(provider).stream(CALLER, request(stream=True)))[0]
    await anext(chunks)
    await chunks.aclose()  # type: ignore[attr-defined]
    assert provider.closed


async def test_unknown_model() -> None:
    with pytest.raises(ModelNotFound):
        await service(ScriptedProvider(SCRIPT)).complete(CALLER, request(model="nope"))


async def test_stream_options_without_stream_is_inconsistent() -> None:
    with pytest.raises(InvalidRequest) as caught:
        await service(ScriptedProvider(SCRIPT)).complete(
            CALLER, request(stream_options={"include_usage": True})
        )
    assert caught.value.param == "stream_options"


async def test_a_stream_closed_before_it_was_read_still_releases_and_records() -> None:
    provider = ScriptedProvider(SCRIPT)
    chat = service(provider)
    chunks, _ = await chat.stream(CALLER, request(stream=True))
    await chunks.aclose()  # type: ignore[attr-defined]
    assert provider.closed
    assert [row["status"] for row in chat.usage._rows] == ["cancelled"]
