"""The money path as one unit, against a store of credits in memory: what each way a request can end
costs, that the limiter hears of every admitted request exactly once, that the charge is committed
before the answer's last chunk, and that a sweep gives back what no live process will settle."""

import asyncio
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chatgate.config import Price
from chatgate.errors import (
    Conflict,
    InsufficientQuota,
    RateLimited,
    StorageUnavailable,
    UpstreamFailed,
)
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.base import Accepted, Bound, Finished, Plan, ProviderEvent, TextDelta, UsageReport
from chatgate.services.auth import MASTER, Principal
from chatgate.services.catalogue import ModelRegistry, Route
from chatgate.services.chat import ChatService
from chatgate.services.metering import Caller, Metering, cost
from chatgate.services.ratelimit import Decision
from chatgate.services.recovery import INTERRUPTED, Recovery
from chatgate.storage.reservations import Held, Lease
from chatgate.storage.usage import UsageRow
from tests.unit.fakes import CountingLimiter, FakeStore, Refusals, ScriptedProvider

USER = Principal(user_id=1, token_id=None)
BALANCE = 1000
BOUND = Bound(5, 16)  # at a credit a token: 21 credits reserved
ANSWER: list[ProviderEvent | Exception] = [
    Accepted(5),
    TextDelta("Hel", tokens=1),
    TextDelta("lo", tokens=1),
    Finished("stop", 5, 2),
]


class HeaderLimiter(CountingLimiter):
    """Admits with rate-limit state to report, so a refusal after admission must carry it."""

    async def admit(self, principal: Principal) -> Decision:
        await super().admit(principal)
        return Decision(rpm=60, tpm=None, requests=1, tokens=0, reset_seconds=30)


class Setup:
    def __init__(self, script: list[ProviderEvent | Exception], balance: int = BALANCE) -> None:
        self.store = FakeStore()
        self.store.grant(1, balance)
        self.limiter = HeaderLimiter()
        self.refusals = Refusals()
        self.provider = ScriptedProvider(script, BOUND)
        route = Route("m", "me", 0, self.provider, "fp", Price())
        registry = ModelRegistry([route], {})
        self.metering = Metering(self.store, self.limiter, self.refusals, owner="me", models=registry)
        self.chat = ChatService(registry, self.metering)
        self.caller = Caller(USER, "t1")

    def charged(self) -> int:
        return BALANCE - self.store.balances[1]

    def conserved(self) -> None:
        """The ledger adds up, and the limiter heard of every admitted request exactly once."""
        assert self.store.discrepancies() == []
        assert self.limiter.balanced, (self.limiter.admitted, self.limiter.tokens)


def request(**extra: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    )


async def test_a_finished_request_pays_what_it_used_and_gets_the_rest_back() -> None:
    s = Setup(ANSWER)
    answer, headers = await s.chat.complete(s.caller, request())
    assert s.charged() == 7 and not s.store.open
    (row,) = s.store.usage
    assert (row.status, row.cost, row.prompt_tokens, row.completion_tokens) == ("ok", 7, 5, 2)
    assert answer.usage is not None and answer.usage.total_tokens == 7
    assert headers["x-ratelimit-limit-requests"] == "60"
    assert s.limiter.tokens == [7]
    s.conserved()


async def test_exact_usage_replaces_the_estimates_and_the_charge_never_passes_the_reservation() -> None:
    s = Setup([Accepted(5), TextDelta("x", tokens=1), Finished("stop", 5, 1), UsageReport(900, 900)])
    await s.chat.complete(s.caller, request())
    assert s.charged() == 21  # reported 1,800 tokens; 21 were reserved
    assert s.store.usage[0].prompt_tokens == 900
    s.conserved()


async def test_a_failure_before_acceptance_costs_nothing_and_reports_the_limits() -> None:
    s = Setup([UpstreamFailed("down")])
    with pytest.raises(UpstreamFailed) as caught:
        await s.chat.complete(s.caller, request())
    assert caught.value.headers["x-ratelimit-limit-requests"] == "60"
    assert s.charged() == 0 and not s.store.open
    assert [(r.status, r.error_code, r.cost) for r in s.store.usage] == [("error", "upstream_error", 0)]
    assert s.provider.closed
    s.conserved()


async def test_a_failure_mid_stream_pays_the_prompt_and_what_was_delivered() -> None:
    s = Setup([Accepted(5), TextDelta("Hel", tokens=1), UpstreamFailed("broke")])
    chunks, _ = await s.chat.stream(s.caller, request(stream=True))
    with pytest.raises(UpstreamFailed):
        async for _ in chunks:
            pass
    assert s.charged() == 6
    assert s.store.usage[0].status == "error"
    s.conserved()


async def test_a_stream_the_client_cuts_short_pays_what_was_delivered() -> None:
    s = Setup(ANSWER)
    chunks, _ = await s.chat.stream(s.caller, request(stream=True))
    await anext(chunks)  # the role
    await anext(chunks)  # "Hel"
    await chunks.aclose()  # type: ignore[attr-defined]
    assert s.charged() == 6 and s.store.usage[0].status == "cancelled"
    assert s.provider.closed
    s.conserved()


async def test_a_client_that_leaves_before_the_first_token_pays_for_its_prompt_once_accepted() -> None:
    s = Setup(ANSWER)
    chunks, _ = await s.chat.stream(s.caller, request(stream=True))  # returns once the engine took it
    await chunks.aclose()  # type: ignore[attr-defined]  # gone before reading a byte
    assert s.charged() == 5
    (row,) = s.store.usage
    assert (row.status, row.prompt_tokens, row.completion_tokens) == ("cancelled", 5, 0)
    s.conserved()


async def test_a_client_that_leaves_before_acceptance_pays_nothing() -> None:
    s = Setup(ANSWER)
    meter = s.metering.admit(s.caller, model="m", price=Price(), bound=BOUND)
    await meter.open()
    assert s.charged() == 21 and s.store.open  # reserved, not yet run
    await meter.close(asyncio.CancelledError())
    assert s.charged() == 0 and s.store.usage[0].status == "cancelled"
    s.conserved()


class Waiting(ScriptedProvider):
    """Accepts, then waits for ever: a non-streamed answer still being generated."""

    def __init__(self) -> None:
        super().__init__([], BOUND)
        self.accepted = asyncio.Event()

    async def run(self, plan: Plan) -> AsyncGenerator[ProviderEvent, None]:
        try:
            yield Accepted(5)
            self.accepted.set()
            await asyncio.Event().wait()
            yield TextDelta("never")
        finally:
            self.closed = True


async def test_a_cancelled_request_is_settled_and_its_engine_released() -> None:
    s = Setup(ANSWER)
    waiting = Waiting()
    route = Route("w", "me", 0, waiting, "fp", Price())
    chat = ChatService(ModelRegistry([route], {}), s.metering)
    task = asyncio.create_task(chat.complete(s.caller, request(model="w")))
    await waiting.accepted.wait()
    task.cancel()  # the client went away (api/chat.py cancels the request's task)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert waiting.closed
    assert s.charged() == 5 and s.store.usage[0].status == "cancelled" and not s.store.open
    s.conserved()


async def test_the_charge_is_committed_before_the_last_chunk_is_handed_out() -> None:
    s = Setup(ANSWER)
    chunks, _ = await s.chat.stream(s.caller, request(stream=True, stream_options={"include_usage": True}))
    seen = []
    async for chunk in chunks:
        if chunk.usage is not None or any(c.finish_reason for c in chunk.choices):
            seen.append(len(s.store.usage))  # rows committed when the final chunks came out
        else:
            assert not s.store.usage  # content flows before the settlement
    assert seen == [1, 1]
    s.conserved()


async def test_insufficient_credits_refuse_before_anything_runs() -> None:
    s = Setup(ANSWER, balance=20)
    with pytest.raises(InsufficientQuota) as caught:
        await s.chat.complete(s.caller, request())
    assert caught.value.headers["x-ratelimit-limit-requests"] == "60"
    assert s.provider.ran == 0 and s.store.balances[1] == 20 and not s.store.open
    assert [r.error_code for r in s.refusals.rows] == ["insufficient_quota"]
    assert s.limiter.tokens == [0]  # admitted, so told of it once, with nothing used
    assert s.store.discrepancies() == []


async def test_a_rate_limited_request_is_never_admitted_nor_told_of() -> None:
    s = Setup(ANSWER)
    s.limiter.refuse = RateLimited("slow down", retry_after=1, headers={})
    with pytest.raises(RateLimited):
        await s.chat.complete(s.caller, request())
    assert s.limiter.admitted == 0 and s.limiter.tokens == [] and s.provider.ran == 0
    assert [r.error_code for r in s.refusals.rows] == ["too_many_requests"]


async def test_a_request_id_already_charged_is_a_conflict() -> None:
    s = Setup(ANSWER)
    await s.chat.complete(s.caller, request())
    with pytest.raises(Conflict):
        await s.chat.complete(s.caller, request())
    assert s.charged() == 7
    s.conserved()


async def test_the_master_key_is_not_metered_but_its_requests_are_logged() -> None:
    s = Setup(ANSWER)
    await s.chat.complete(Caller(MASTER, "m1"), request())
    assert s.charged() == 0 and not s.store.open
    assert [(r.user_id, r.cost) for r in s.store.usage] == [(None, 7)]
    s.conserved()


async def test_a_backlog_of_unwritten_rows_refuses_requests_instead_of_dropping_rows() -> None:
    s = Setup(ANSWER)
    s.refusals.backlogged = True
    with pytest.raises(StorageUnavailable):
        await s.chat.complete(s.caller, request())
    assert s.provider.ran == 0 and s.limiter.admitted == 0 and not s.store.open


def recovery(
    store: FakeStore, me: str, alive: dict[str, bool | None], in_flight: set[tuple[int, str]]
) -> Recovery:
    lease = Lease(me, "host", 1, 1, datetime.now(UTC))
    return Recovery(
        store,
        lease,
        lease_seconds=30,
        in_flight=lambda: in_flight,
        alive=lambda lease: alive.get(lease.owner),
    )


async def test_a_settlement_that_cannot_be_written_fails_the_request_and_a_sweep_refunds_it() -> None:
    s = Setup(ANSWER)
    run = await s.chat.start(s.caller, request())
    s.store.down = True  # the database goes away mid-request
    with pytest.raises(StorageUnavailable):
        await s.chat.complete(s.caller, request(user="again"))  # a second request cannot even reserve
    async for _ in run:
        pass
    with pytest.raises(StorageUnavailable):
        await run.meter.settle()
    await run.meter.close()
    assert s.limiter.balanced and s.store.open  # the first request failed closed; its credits are held
    s.store.down = False
    released = await recovery(s.store, "me", {}, s.metering.in_flight()).sweep()
    assert [h.trace_id for h in released] == ["t1"]
    assert s.charged() == 0 and not s.store.open
    assert [(r.status, r.error_code, r.cost) for r in s.store.usage] == [("error", INTERRUPTED, 0)]
    s.conserved()


async def test_a_sweep_refunds_what_dead_processes_held_and_nothing_a_live_one_holds() -> None:
    store = FakeStore()
    store.grant(1, 1000)
    now = datetime.now(UTC)

    async def hold(owner: str, trace: str, amount: int) -> None:
        assert await store.reserve(
            user_id=1, token_id=None, trace_id=trace, amount=amount, model="m", owner=owner
        )

    await hold("crashed-here", "a", 100)  # its process is gone from this host: released at once
    await hold("lapsed", "b", 200)  # another host's process, its lease run out
    await hold("elsewhere", "c", 300)  # another host's process, its lease current: left alone
    await hold("sibling", "d", 50)  # another worker of this host, still running: left alone
    await hold("before-0003", "e", 7)  # no lease at all: opened before revision 0003
    await hold("me", "f", 10)  # this process, in flight: left alone
    await hold("me", "g", 20)  # this process, no longer in flight (its settlement failed)
    for owner, expires in [
        ("crashed-here", now + timedelta(seconds=30)),
        ("lapsed", now - timedelta(seconds=1)),
        ("elsewhere", now + timedelta(seconds=30)),
        ("sibling", now + timedelta(seconds=30)),
    ]:
        store.lease_rows[owner] = Lease(owner, "h", 1, 1, expires)
    alive = {"crashed-here": False, "sibling": True, "lapsed": None, "elsewhere": None}
    sweeper = recovery(store, "me", alive, {(1, "f")})
    released = await sweeper.sweep()
    assert sorted(h.trace_id for h in released) == ["a", "b", "e", "g"]
    assert sorted(store.open) == [(1, "c"), (1, "d"), (1, "f")]
    assert store.balances[1] == 1000 - 300 - 50 - 10
    assert set(store.lease_rows) == {"elsewhere", "sibling"}  # dead leases with nothing left go
    assert all(r.error_code == INTERRUPTED and r.cost == 0 for r in store.usage)
    assert store.discrepancies() == []
    assert await sweeper.sweep() == []  # nothing twice


async def test_a_request_that_reserves_while_a_sweep_reads_the_reservations_is_left_alone() -> None:
    s = Setup(ANSWER)
    sweeper = recovery(s.store, "me", {}, set())
    sweeper._in_flight = s.metering.in_flight
    read = s.store.open_reservations
    started: list[Any] = []

    async def reading() -> list[Held]:  # a request is admitted and reserves while the sweep reads
        started.append(await s.chat.start(s.caller, request()))
        return await read()

    s.store.open_reservations = reading  # type: ignore[method-assign]
    assert await sweeper.sweep() == []
    async for _ in started[0]:
        pass
    await started[0].meter.close()
    assert s.charged() == 7  # settled and charged, not refunded under it
    s.conserved()


async def test_a_request_that_settles_while_a_sweep_reads_the_reservations_costs_the_sweep_no_write() -> None:
    s = Setup(ANSWER)
    run = await s.chat.start(s.caller, request())
    sweeper = recovery(s.store, "me", {}, set())
    sweeper._in_flight = s.metering.in_flight
    read = s.store.open_reservations
    releases: list[Held] = []
    release = s.store.release

    async def reading() -> list[Held]:  # the request's reservation is read, then it settles
        found = await read()
        async for _ in run:
            pass
        await run.meter.close()
        return found

    async def counted(held: Held, usage: UsageRow) -> bool:
        releases.append(held)
        return await release(held, usage)

    s.store.open_reservations = reading  # type: ignore[method-assign]
    s.store.release = counted  # type: ignore[method-assign]
    assert await sweeper.sweep() == [] and releases == []
    assert s.charged() == 7
    s.conserved()


async def test_start_up_takes_a_lease_and_sweeps() -> None:
    store = FakeStore()
    store.grant(1, 100)
    assert await store.reserve(user_id=1, token_id=None, trace_id="x", amount=40, model="m", owner="gone")
    sweeper = recovery(store, "me", {}, set())
    await sweeper.start()
    try:
        assert "me" in store.lease_rows and store.lease_rows["me"].expires_at > datetime.now(UTC)
        assert store.balances[1] == 100 and not store.open
    finally:
        await sweeper.stop()
    assert "me" not in store.lease_rows  # a clean stop gives the lease up


PRICED = Price(prompt=1_000_000, completion=2_000_000)


def test_cost_multiplies_tokens_and_extra_credits_and_rounds_up_once() -> None:
    assert cost(PRICED, 9, 4) == 17
    assert cost(PRICED, 9, 4, multiplier=2500) == 43  # 42.5 rounded up
    assert cost(PRICED, 9, 4, extra=3, multiplier=500) == 10  # (17 + 3) / 2
    assert cost(PRICED, 0, 0, extra=1000, multiplier=0) == 0  # a free group
    assert cost(Price(prompt=1, completion=1), 1, 0) == 1  # never free unless priced at 0


async def test_the_group_multiplier_applies_at_reservation_and_settlement_and_is_recorded() -> None:
    s = Setup(ANSWER)
    s.caller = Caller(Principal(user_id=1, token_id=None, price_multiplier=2500), "t1")
    meter = s.metering.admit(s.caller, model="m", price=PRICED, bound=BOUND)
    async with meter:
        assert meter.reserved == 93 and s.charged() == 93  # (5 + 2 x 16) x 2.5, rounded up
        for event in ANSWER:
            assert not isinstance(event, Exception)
            meter.observe(event)
        charge = await meter.settle()
    assert charge.cost == 23 and s.charged() == 23  # (5 + 2 x 2) x 2.5 = 22.5, rounded up
    row = s.store.usage[-1]
    assert (row.price_prompt, row.price_completion, row.price_multiplier) == (1_000_000, 2_000_000, 2500)
    s.conserved()


async def test_a_multiplier_the_balance_cannot_cover_is_refused_and_costs_nothing() -> None:
    s = Setup(ANSWER, balance=50)
    s.caller = Caller(Principal(user_id=1, token_id=None, price_multiplier=3000), "t1")
    with pytest.raises(InsufficientQuota):  # 21 at the list price, 63 for this group
        await s.chat.complete(s.caller, request())
    assert s.store.balances[1] == 50 and not s.store.open
    assert s.refusals.rows[-1].price_multiplier is None  # a refusal cost nothing, at no price
    s.conserved()
