"""The per-user concurrency slot hangs on the metering unit: the real limiter's slot is taken when a
Meter admits a request and given back exactly once when it ends (completed, refused after
admission, abandoned, cut short, failed inside the block); a request refused before admission
takes none. Against a store of credits in memory."""

import itertools

import pytest

from chatgate.config import Price
from chatgate.errors import InsufficientQuota, ModelNotFound, RateLimited, UpstreamFailed
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.base import Accepted, Bound, Finished, ProviderEvent, TextDelta
from chatgate.services.auth import Principal, UserLimits
from chatgate.services.catalogue import ModelRegistry, Route
from chatgate.services.chat import ChatService
from chatgate.services.metering import Caller, Metering
from chatgate.services.ratelimit import Decision, LocalRateLimiter
from tests.unit.fakes import FakeStore, Refusals, ScriptedProvider

USER = Principal(user_id=7, token_id=3, user=UserLimits(concurrency=1))  # one request at a time
ANSWER: list[ProviderEvent | Exception] = [Accepted(5), TextDelta("Hi", tokens=1), Finished("stop", 5, 1)]
_ids = itertools.count()


class CountingLimiter(LocalRateLimiter):
    """The real in-process limiter, counting admissions and ends."""

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


class Setup:
    def __init__(self, script: list[ProviderEvent | Exception], balance: int = 1000) -> None:
        self.store = FakeStore()
        self.store.grant(7, balance)
        self.limiter = CountingLimiter()
        route = Route("m", "me", 0, ScriptedProvider(script, Bound(5, 16)), "fp", Price())
        registry = ModelRegistry([route], {})
        self.metering = Metering(self.store, self.limiter, Refusals(), owner="me", models=registry)
        self.chat = ChatService(registry, self.metering)

    async def slot_is_free(self) -> None:
        """Another request of the user's is admitted, and ends (its one slot is free again)."""
        admitted = len(self.limiter.ended)
        await self.limiter.admit(USER)
        await self.limiter.add_tokens(USER, 0)
        assert len(self.limiter.ended) == admitted + 1


def caller() -> Caller:
    return Caller(USER, f"req_{next(_ids)}")


def ask(**extra: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    )


async def test_a_completed_request_ends_once_with_its_tokens() -> None:
    s = Setup(ANSWER)
    await s.chat.complete(caller(), ask())
    assert (s.limiter.admitted, s.limiter.ended) == (1, [6])
    await s.slot_is_free()


async def test_a_request_refused_after_admission_ends_once_with_no_tokens() -> None:
    for s in (Setup(ANSWER, balance=0), Setup([UpstreamFailed("down")])):
        with pytest.raises((InsufficientQuota, UpstreamFailed)):
            await s.chat.complete(caller(), ask())
        assert (s.limiter.admitted, s.limiter.ended) == (1, [0])
        await s.slot_is_free()


async def test_a_request_refused_before_admission_takes_no_slot() -> None:
    s = Setup(ANSWER)
    with pytest.raises(ModelNotFound):
        await s.chat.complete(caller(), ask(model="nope"))
    assert (s.limiter.admitted, s.limiter.ended) == (0, [])


async def test_streams_end_once_whether_read_abandoned_or_cut_short() -> None:
    s = Setup(ANSWER)
    read, _ = await s.chat.stream(caller(), ask(stream=True))
    with pytest.raises(RateLimited):  # one at a time, and this one still runs
        await s.limiter.admit(USER)
    _ = [chunk async for chunk in read]
    abandoned, _ = await s.chat.stream(caller(), ask(stream=True))  # admitted: the slot came back
    await abandoned.aclose()  # type: ignore[attr-defined]
    cut, _ = await s.chat.stream(caller(), ask(stream=True))
    await anext(cut)
    await cut.aclose()  # type: ignore[attr-defined]
    assert s.limiter.admitted == 3 and len(s.limiter.ended) == 3
    await s.slot_is_free()
    assert s.store.discrepancies() == []


async def test_a_meter_used_directly_ends_once_when_its_block_fails() -> None:
    """As the images route uses it: admitted on entering, released once on leaving, however."""
    s = Setup(ANSWER)
    with pytest.raises(UpstreamFailed):
        async with s.metering.admit(caller(), model="m", price=Price(), bound=Bound(5, 16)) as meter:
            with pytest.raises(RateLimited):
                await s.limiter.admit(USER)
            await meter.close(UpstreamFailed("drawn badly"))  # an early close, then the block's own
            raise UpstreamFailed("drawn badly")
    assert (s.limiter.admitted, s.limiter.ended) == (1, [0])
    await s.slot_is_free()
    assert s.store.discrepancies() == [] and not s.store.open


async def test_a_request_that_runs_nothing_gives_its_slot_back_at_once() -> None:
    """Counting a prompt's tokens (Messages' count_tokens) is counted against the request rate,
    and ends at once: it holds no slot among the user's requests at once."""
    s = Setup(ANSWER)
    for _ in range(3):
        headers = await s.metering.limit(caller())
        assert isinstance(headers, dict)
    assert (s.limiter.admitted, s.limiter.ended) == (3, [0, 0, 0])
    await s.slot_is_free()
