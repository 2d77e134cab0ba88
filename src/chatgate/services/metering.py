"""The money path as one unit: admit, reserve, run, settle, record. Every costly route goes through it.

    async with metering.admit(caller, model=route.name, price=route.price, bound=plan.bound) as meter:
        async for event in provider.run(plan):   # heavy work only after the reservation
            meter.observe(event)
            ...                                   # send what the client may have so far
        await meter.settle()                      # committed: now write the answer's last byte

``admit`` counts the request against the caller's limits and reserves the most it can cost
(``bound``, from the request alone) before anything runs; a refusal raises, with the caller's
rate-limit headers, and costs nothing. ``settle`` commits the charge and the request's usage row in
one transaction before it returns, so an answer whose last byte went out is never unrecorded.
Leaving the block settles whatever was not (an error, a cancellation), and every admitted request
ends with exactly one ``limiter.add_tokens`` (0 tokens when nothing was used), whatever happens.

What a request costs, from what ``observe`` saw:

- finished: the exact usage the provider reported (UsageReport), or else the prompt as Accepted
  counted it (the bound, if the provider never said) and each choice's completion tokens (at least
  what was delivered);
- cut short (an error, or the client leaving): the tokens delivered, plus the prompt if anything
  was delivered, or if the client left after the engine or upstream accepted the request (it has
  read the prompt by then, and an upstream bills for it); nothing if it failed before any output;
- never more than was reserved.
"""

import asyncio
import json
import logging
import time
from collections.abc import Container
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Protocol

from chatgate.aio import to_the_end
from chatgate.config import Price
from chatgate.errors import ChatgateError, Conflict, InsufficientQuota, StorageUnavailable
from chatgate.providers.base import (
    Accepted,
    Bound,
    Finished,
    ProviderEvent,
    TextDelta,
    ToolCallDelta,
    UsageReport,
)
from chatgate.services.auth import Principal
from chatgate.services.metrics import UNKNOWN_MODEL, Metrics
from chatgate.services.ratelimit import RateLimiter
from chatgate.storage.fastpath import DuplicateReservation, Settlement
from chatgate.storage.usage import UsageRow

log = logging.getLogger("chatgate.metering")
requests_log = logging.getLogger("chatgate.requests")  # one JSON line per request

PER = 1_000_000
PERMILLE = 1000  # a group's price multiplier is in thousandths: 1000 is the catalogue's price


def cost(
    price: Price, prompt_tokens: int, completion_tokens: int, extra: int = 0, multiplier: int = PERMILLE
) -> int:
    """Credits for a call (and ``extra`` credits, an image's), times the caller's group multiplier,
    rounded up: a request that used tokens is never free unless priced at 0."""
    millionths = prompt_tokens * price.prompt + completion_tokens * price.completion + extra * PER
    return -(-millionths * multiplier // (PER * PERMILLE))


@dataclass(frozen=True)
class Caller:
    principal: Principal
    trace_id: str
    api: str = "chat.completions"  # the API the request came through, named in its usage row


class Store(Protocol):
    """Where credits are kept: the database (storage.money.DatabaseMoney), or a fake in unit tests."""

    async def reserve(
        self, *, user_id: int, token_id: int | None, trace_id: str, amount: int, model: str, owner: str
    ) -> bool:
        """Take ``amount`` from the balance and the token's cap, both or neither; False if not covered."""
        ...

    async def settle(self, settlement: Settlement) -> bool:
        """Commit the settlement; False if the reservation had already been refunded by a sweep."""
        ...


class RefusalLog(Protocol):
    """Where the usage rows of refused requests go (they move no credits): batched, bounded."""

    def record(self, row: UsageRow) -> None: ...

    @property
    def backlogged(self) -> bool:
        """Too many rows wait for a database that cannot be reached: refuse requests until it can."""
        ...


@dataclass(frozen=True)
class Charge:
    """What a settled request was charged for."""

    prompt_tokens: int
    completion_tokens: int
    cost: int
    status: str  # ok | cancelled | error


def _status(exc: BaseException | None) -> tuple[str, str | None]:
    if exc is None:
        return "ok", None
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "cancelled", None
    return "error", error_code(exc)


def error_code(exc: BaseException) -> str:
    return exc.code if isinstance(exc, ChatgateError) else "internal_error"


class Meter:
    """One admitted request: its reservation, what it has used so far, and its settlement."""

    def __init__(self, metering: "Metering", caller: Caller, model: str, price: Price, bound: Bound) -> None:
        self._metering = metering
        self.caller = caller
        self.model = model
        self.price = price
        self.bound = bound
        # The caller's group's, read with its token: reserved and settled at the same price.
        self.multiplier = caller.principal.price_multiplier
        self.headers: dict[str, str] = {}  # the caller's rate-limit state, once admitted
        self.started = time.monotonic()
        self.reserved = 0
        self.accepted = False
        self._prompt = 0  # as Accepted counted it
        self._delivered = 0  # completion tokens in the deltas seen
        self._finished = 0  # completion tokens of the choices that finished
        self._reported: UsageReport | None = None
        self._admitted = False  # counted by the limiter: it is told the tokens exactly once
        self._charge: Charge | None = None
        self._settling = False
        self._closed = False

    async def __aenter__(self) -> "Meter":
        return await self.open()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close(exc)

    async def open(self) -> "Meter":
        """Admit the request (limits) and reserve its bound; raises the refusal, recorded, if not."""
        await self._metering._admit(self)
        return self

    def observe(self, event: ProviderEvent) -> None:
        """Count what a provider event means for the bill."""
        if isinstance(event, Accepted):
            self.accepted = True
            self._prompt = event.prompt_tokens
        elif isinstance(event, TextDelta | ToolCallDelta):
            self._delivered += event.tokens
        elif isinstance(event, Finished):
            self._finished += event.completion_tokens
        elif isinstance(event, UsageReport):
            self._reported = event

    @property
    def prompt_tokens(self) -> int:
        """The prompt as charged if the request finishes now."""
        if self._reported is not None:
            return self._reported.prompt_tokens
        return self._prompt if self.accepted else self.bound.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        """The completion as charged if the request finishes now."""
        if self._reported is not None:
            return self._reported.completion_tokens
        return max(self._finished, self._delivered)

    def _used(self, status: str) -> tuple[int, int, int]:
        if status == "ok":
            extra = self._reported.extra_cost if self._reported is not None else 0
            return self.prompt_tokens, self.completion_tokens, extra
        # Cut short: what was delivered, and the prompt once it was read (see the module docstring).
        delivered = self._delivered
        prompt = self.prompt_tokens if delivered or (status == "cancelled" and self.accepted) else 0
        return prompt, delivered, 0

    async def settle(self, status: str = "ok", code: str | None = None) -> Charge:
        """Charge what was used and record the request, committed when this returns (once; later
        calls return the same charge). StorageUnavailable if the database cannot take it: the
        request then fails, and its reservation is refunded in full by a later sweep."""
        if self._charge is not None:
            return self._charge
        if self._settling:
            raise StorageUnavailable("The request's settlement could not be recorded.")
        self._settling = True
        return await to_the_end(self._metering._settle(self, status, code))

    async def close(self, exc: BaseException | None = None) -> None:
        """End the request: settle it if it was not (as ``exc`` says it ended), tell the limiter its
        tokens, and give ``exc`` (a refusal after admission) the caller's rate-limit headers."""
        if isinstance(exc, ChatgateError):
            exc.headers = {**self.headers, **exc.headers}
        if self._closed:
            return
        self._closed = True
        try:
            if self._charge is None and not self._settling:
                status, code = _status(exc)
                await self.settle(status, code)
        finally:
            used = self._charge.prompt_tokens + self._charge.completion_tokens if self._charge else 0
            await to_the_end(self._metering._release(self, used))


class Metering:
    """Admits, reserves, settles and records requests; one per process, built in create_app."""

    def __init__(
        self,
        store: Store,
        limiter: RateLimiter,
        refusals: RefusalLog,
        *,
        owner: str,
        metrics: Metrics | None = None,
        models: Container[str] = (),
    ) -> None:
        self._store = store
        self._limiter = limiter
        self._refusals = refusals
        self.owner = owner  # the id this process's reservations are held under (see recovery.py)
        self.metrics = metrics or Metrics()
        self._models = models  # the catalogue's names: metrics label anything else as unknown
        self._in_flight: set[tuple[int, str]] = set()

    def admit(self, caller: Caller, *, model: str, price: Price, bound: Bound) -> Meter:
        """A meter for one request: enter it (``async with``, or ``open``/``close``) to admit it."""
        return Meter(self, caller, model, price, bound)

    async def limit(self, caller: Caller) -> dict[str, str]:
        """Count a request that runs no model and costs no credits (counting a prompt's tokens)
        against the caller's request rate: its rate-limit headers, or the refusal. Nothing is
        reserved or recorded, and its slot among the user's requests at once is given back at once
        (every admission ends with one ``add_tokens``)."""
        decision = await self._limiter.admit(caller.principal)
        await to_the_end(self._limiter.add_tokens(caller.principal, 0))
        return decision.headers()

    def in_flight(self) -> set[tuple[int, str]]:
        """The (user, request) pairs whose reservations this process holds and will settle."""
        return set(self._in_flight)

    def refused(self, caller: Caller, model: str, exc: BaseException, started: float) -> None:
        """Record a request refused before it was admitted (it cost nothing)."""
        self._record(caller, model, started, Charge(0, 0, 0, "error"), error_code(exc))

    async def _admit(self, meter: Meter) -> None:
        caller, principal = meter.caller, meter.caller.principal
        if self._refusals.backlogged:
            log.error("refusing a request: usage rows wait for a database that cannot be reached")
            raise StorageUnavailable("The server cannot record usage right now; try again shortly.")
        try:
            decision = await self._limiter.admit(principal)
        except ChatgateError as exc:
            self.refused(caller, meter.model, exc, meter.started)
            raise
        meter._admitted = True
        meter.headers = decision.headers()
        bound = meter.bound
        amount = cost(
            meter.price, bound.prompt_tokens, bound.completion_tokens, bound.extra_cost, meter.multiplier
        )
        if principal.user_id is None:
            meter.reserved = amount  # the master key is not metered: nothing is taken
            return
        key = (principal.user_id, caller.trace_id)
        self._in_flight.add(key)
        try:
            await to_the_end(self._reserve(meter, principal.user_id, amount))
        except BaseException as exc:
            if meter.reserved:  # reserved, then cancelled: settled at once, as a request that never ran
                await meter.close(exc)
                raise
            self._in_flight.discard(key)
            meter._closed = True
            if isinstance(exc, ChatgateError):
                exc.headers = {**meter.headers, **exc.headers}
                self.refused(caller, meter.model, exc, meter.started)
            await to_the_end(self._release(meter, 0))
            raise

    async def _reserve(self, meter: Meter, user_id: int, amount: int) -> None:
        principal, trace_id = meter.caller.principal, meter.caller.trace_id
        try:
            covered = await self._store.reserve(
                user_id=user_id,
                token_id=principal.token_id,
                trace_id=trace_id,
                amount=amount,
                model=meter.model,
                owner=self.owner,
            )
        except DuplicateReservation as exc:
            raise Conflict(
                f"A request with id {trace_id} was already charged; send a new x-request-id.",
                code="duplicate_request",
            ) from exc
        except Exception as exc:
            log.exception("could not reserve credits")
            raise StorageUnavailable("The server cannot reach its database right now.") from exc
        if not covered:
            raise InsufficientQuota(
                f"You exceeded your current quota: this request could cost up to {amount} credits, more "
                "than the balance (or this token's cap) has left. Lower max_tokens or add credits."
            )
        meter.reserved = amount

    async def _settle(self, meter: Meter, status: str, code: str | None) -> Charge:
        caller, principal = meter.caller, meter.caller.principal
        prompt, completion, extra = meter._used(status)
        full = cost(meter.price, prompt, completion, extra, meter.multiplier)
        charged = full if principal.user_id is None else min(full, meter.reserved)
        charge = Charge(prompt, completion, charged, status)
        row = self._row(caller, meter.model, meter.started, charge, code, meter)
        key = (principal.user_id, caller.trace_id) if principal.user_id is not None else None
        try:
            held = await self._store.settle(Settlement(row, refund=meter.reserved - charged))
        except Exception as exc:
            log.exception("could not record the settlement of %s; a sweep will refund it", caller.trace_id)
            raise StorageUnavailable("The server could not record this request; it was not charged.") from exc
        finally:
            if key is not None:
                self._in_flight.discard(key)
        if not held:
            log.warning("request %s was refunded by a sweep before it settled: not charged", caller.trace_id)
            charge = Charge(prompt, completion, 0, status)
        meter._charge = charge
        self._observed(row, charge)
        return charge

    async def _release(self, meter: Meter, tokens: int) -> None:
        if meter._admitted:
            meter._admitted = False
            await self._limiter.add_tokens(meter.caller.principal, tokens)

    def _row(
        self,
        caller: Caller,
        model: str,
        started: float,
        charge: Charge,
        code: str | None,
        meter: Meter | None = None,
    ) -> UsageRow:
        """The request's usage row; an admitted one (``meter``) records the price it was charged at."""
        principal = caller.principal
        return UsageRow(
            trace_id=caller.trace_id,
            user_id=principal.user_id,
            token_id=principal.token_id,
            model=model,
            prompt_tokens=charge.prompt_tokens,
            completion_tokens=charge.completion_tokens,
            cost=charge.cost,
            latency_ms=int((time.monotonic() - started) * 1000),
            status=charge.status,
            error_code=code,
            created_at=datetime.now(UTC),
            price_prompt=meter.price.prompt if meter is not None else None,
            price_completion=meter.price.completion if meter is not None else None,
            price_multiplier=meter.multiplier if meter is not None else None,
            api=caller.api,
        )

    def _record(self, caller: Caller, model: str, started: float, charge: Charge, code: str | None) -> None:
        row = self._row(caller, model, started, charge, code)
        self._refusals.record(row)
        self._observed(row, charge)

    def _observed(self, row: UsageRow, charge: Charge) -> None:
        """The request's metrics and its structured log line."""
        self.metrics.request(
            model=row.model if row.model in self._models else UNKNOWN_MODEL,  # a client's name: unbounded
            status=row.status,
            code=row.error_code,
            seconds=row.latency_ms / 1000,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
        )
        if requests_log.isEnabledFor(logging.INFO):
            requests_log.info(
                json.dumps(
                    {
                        "event": "chat_request",
                        "api": row.api,
                        "trace_id": row.trace_id,
                        "user_id": row.user_id,
                        "token_id": row.token_id,
                        "model": row.model,
                        "status": row.status,
                        "code": row.error_code,
                        "prompt_tokens": row.prompt_tokens,
                        "completion_tokens": row.completion_tokens,
                        "cost": charge.cost,
                        "latency_ms": row.latency_ms,
                    }
                )
            )
