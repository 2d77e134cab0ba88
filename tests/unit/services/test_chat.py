"""ChatService against a scripted provider: chunk order, usage, refusals, and early close."""

import pytest

from chatgate.config import Price
from chatgate.errors import InvalidRequest, ModelNotFound
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.base import Accepted, Finished, ProviderEvent, TextDelta
from chatgate.services.auth import MASTER
from chatgate.services.catalogue import ModelRegistry, Route
from chatgate.services.chat import ChatService
from chatgate.services.metering import Caller, Metering
from tests.unit.fakes import CountingLimiter, FakeStore, Refusals, ScriptedProvider

SCRIPT: list[ProviderEvent | Exception] = [
    Accepted(5),
    TextDelta("Hel", tokens=1),
    TextDelta("lo", tokens=1),
    Finished("stop", 5, 2),
]


CALLER = Caller(MASTER, "req_unit")


def service(provider: ScriptedProvider) -> ChatService:
    route = Route("m", "me", 0, provider, "fp_test", Price())
    registry = ModelRegistry([route], {"alias": "m"})
    metering = Metering(FakeStore(), CountingLimiter(), Refusals(), owner="me", models=registry)
    return ChatService(registry, metering)


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


async def test_the_answer_carries_the_fingerprint_of_the_deployment_that_took_it() -> None:
    """A route's own fingerprint unless the provider's Accepted tells one; a second Accepted (an
    upstream's first chunk) tells it before any chunk is built, so every chunk carries the same."""
    told: list[ProviderEvent | Exception] = [Accepted(5), Accepted(5, "fp_there"), *SCRIPT[1:]]
    answer = (await service(ScriptedProvider(told)).complete(CALLER, request()))[0]
    assert answer.system_fingerprint == "fp_there"
    chunks = [
        c async for c in (await service(ScriptedProvider(told)).stream(CALLER, request(stream=True)))[0]
    ]
    assert {c.system_fingerprint for c in chunks} == {"fp_there"}
    plain = (await service(ScriptedProvider(SCRIPT)).complete(CALLER, request()))[0]
    assert plain.system_fingerprint == "fp_test"


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
    store = chat.metering._store
    assert isinstance(store, FakeStore)
    assert [row.status for row in store.usage] == ["cancelled"]
