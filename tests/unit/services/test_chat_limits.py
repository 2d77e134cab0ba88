"""The limiter's contract with the chat path: every admitted request ends with exactly one
``add_tokens`` (which gives its slot back), however it ends; a request refused before admission
ends with none."""

from collections.abc import AsyncGenerator

import pytest

from chatgate.config import Price
from chatgate.errors import EngineFailure, InsufficientQuota, ModelNotFound, RateLimited
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.base import ProviderEvent, Started
from chatgate.services.auth import Principal, UserLimits
from chatgate.services.catalogue import ModelRegistry, Route
from chatgate.services.chat import Caller, ChatService
from chatgate.services.quota import Reservation
from chatgate.services.ratelimit import Decision, LocalRateLimiter
from chatgate.services.usage import UsageRecorder
from chatgate.storage.database import Database
from tests.unit.services.test_chat import SCRIPT, ScriptedProvider

USER = Caller(Principal(user_id=7, token_id=3, user=UserLimits(concurrency=1)), "req_limits")


class CountingLimiter(LocalRateLimiter):
    def __init__(self) -> None:
        super().__init__()
        self.admitted = 0
        self.ended: list[int] = []

    async def admit(self, principal: Principal) -> Decision:
        decision = await super().admit(principal)
        self.admitted += 1
        return decision

    async def add_tokens(self, principal: Principal, tokens: int) -> None:
        self.ended.append(tokens)
        await super().add_tokens(principal, tokens)


class Quota:
    """Reserves (or refuses) without a database; settles to nothing owed."""

    def __init__(self, *, refuse: bool = False) -> None:
        self.refuse = refuse

    async def reserve(self, principal: Principal, trace_id: str, price: Price, *amounts: int) -> Reservation:
        if self.refuse:
            raise InsufficientQuota("no credits")
        return Reservation(principal, trace_id, price, 100)

    def settle(self, reservation: Reservation, *used: int) -> tuple[int, None]:
        return 0, None


class FailingProvider(ScriptedProvider):
    """Fails before it starts (an upstream that can't be reached)."""

    async def stream(self, request: ChatCompletionRequest) -> AsyncGenerator[ProviderEvent, None]:
        raise EngineFailure("down")
        yield Started(1, 1)  # pragma: no cover (makes this a generator)


def chat(provider: ScriptedProvider, limiter: CountingLimiter, quota: Quota | None = None) -> ChatService:
    route = Route("m", "me", 0, provider, "fp_test", Price())
    recorder = UsageRecorder(Database("sqlite+aiosqlite:///:memory:"), flush_seconds=3600)
    return ChatService(ModelRegistry([route], {}), quota or Quota(), limiter, recorder)  # type: ignore[arg-type]


def ask(**extra: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    )


async def test_a_completed_request_ends_once_with_its_tokens() -> None:
    limiter = CountingLimiter()
    await chat(ScriptedProvider(SCRIPT), limiter).complete(USER, ask())
    assert (limiter.admitted, limiter.ended) == (1, [7])


async def test_a_request_refused_after_admission_ends_once_with_no_tokens() -> None:
    for quota, provider in (
        (Quota(refuse=True), ScriptedProvider(SCRIPT)),
        (Quota(), FailingProvider(SCRIPT)),
    ):
        limiter = CountingLimiter()
        with pytest.raises((InsufficientQuota, EngineFailure)):
            await chat(provider, limiter, quota).complete(USER, ask())
        assert (limiter.admitted, limiter.ended) == (1, [0])
        await limiter.admit(USER.principal)  # its one slot is free again


async def test_a_request_refused_before_admission_never_ends() -> None:
    limiter = CountingLimiter()
    with pytest.raises(ModelNotFound):
        await chat(ScriptedProvider(SCRIPT), limiter).complete(USER, ask(model="nope"))
    assert (limiter.admitted, limiter.ended) == (0, [])


async def test_streams_end_once_whether_read_abandoned_or_cut_short() -> None:
    limiter = CountingLimiter()
    service = chat(ScriptedProvider(SCRIPT), limiter)
    read, _ = await service.stream(USER, ask(stream=True))
    with pytest.raises(RateLimited):  # one at a time, and this one still runs
        await limiter.admit(USER.principal)
    _ = [chunk async for chunk in read]
    abandoned, _ = await service.stream(USER, ask(stream=True))  # admitted: the slot came back
    await abandoned.aclose()  # type: ignore[attr-defined]
    cut, _ = await service.stream(USER, ask(stream=True))
    await anext(cut)
    await cut.aclose()  # type: ignore[attr-defined]
    assert limiter.admitted == 3 and len(limiter.ended) == 3
