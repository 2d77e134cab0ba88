"""Fakes for the unit tests of the money path: a store of credits in memory with the database's
rules, a limiter that counts its calls, and a provider that replays a script."""

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.base import Bound, Plan, ProviderEvent
from chatgate.services.auth import Principal
from chatgate.services.ratelimit import UNLIMITED, Decision
from chatgate.storage.fastpath import DuplicateReservation, Settlement
from chatgate.storage.reservations import Held, Lease
from chatgate.storage.usage import UsageRow


class StoreDown(ConnectionError):
    """The fake database is unreachable."""


@dataclass
class FakeStore:
    """Balances, open reservations, usage rows and leases in memory; ``down`` makes every call fail."""

    balances: dict[int, int] = field(default_factory=dict)
    granted: dict[int, int] = field(default_factory=dict)
    open: dict[tuple[int, str], Held] = field(default_factory=dict)
    settled: set[tuple[int, str]] = field(default_factory=set)
    usage: list[UsageRow] = field(default_factory=list)
    lease_rows: dict[str, Lease] = field(default_factory=dict)
    down: bool = False

    def grant(self, user_id: int, credits: int) -> None:
        self.balances[user_id] = self.balances.get(user_id, 0) + credits
        self.granted[user_id] = self.granted.get(user_id, 0) + credits

    def _check_up(self) -> None:
        if self.down:
            raise StoreDown("the database is unreachable")

    async def reserve(
        self, *, user_id: int, token_id: int | None, trace_id: str, amount: int, model: str, owner: str
    ) -> bool:
        self._check_up()
        key = (user_id, trace_id)
        if key in self.open or key in self.settled:
            raise DuplicateReservation(trace_id)
        if self.balances.get(user_id, 0) < amount:
            return False
        self.balances[user_id] -= amount
        self.open[key] = Held(user_id, token_id, trace_id, amount, model, owner, datetime.now(UTC))
        return True

    async def settle(self, settlement: Settlement) -> bool:
        self._check_up()
        row = settlement.usage
        held = True
        if row.user_id is not None:
            key = (row.user_id, row.trace_id)
            held = self.open.pop(key, None) is not None
            if held:
                self.settled.add(key)
                self.balances[row.user_id] += settlement.refund
        self.usage.append(row if held else replace(row, cost=0))
        return held

    async def renew(self, lease: Lease) -> None:
        self._check_up()
        self.lease_rows[lease.owner] = lease

    async def leases(self) -> list[Lease]:
        self._check_up()
        return list(self.lease_rows.values())

    async def drop_lease(self, owner: str) -> None:
        self._check_up()
        self.lease_rows.pop(owner, None)

    async def open_reservations(self) -> list[Held]:
        self._check_up()
        return list(self.open.values())

    async def release(self, held: Held, usage: UsageRow) -> bool:
        self._check_up()
        key = (held.user_id, held.trace_id)
        if self.open.pop(key, None) is None:
            return False
        self.settled.add(key)
        self.balances[held.user_id] += held.amount
        self.usage.append(usage)
        return True

    def discrepancies(self) -> list[str]:
        """What `chatgate ledger verify` would say: granted = balance + settled charges + open."""
        problems = []
        for user_id, granted in self.granted.items():
            charged = sum(r.cost for r in self.usage if r.user_id == user_id)
            held = sum(h.amount for h in self.open.values() if h.user_id == user_id)
            if granted != self.balances[user_id] + charged + held:
                problems.append(f"user {user_id}: {granted} != {self.balances[user_id]} + {charged} + {held}")
        return problems


class Refusals:
    """The usage rows of refused requests, as the batched recorder would queue them."""

    def __init__(self) -> None:
        self.rows: list[UsageRow] = []
        self.backlogged = False

    def record(self, row: UsageRow) -> None:
        self.rows.append(row)


class CountingLimiter:
    """Admits everyone (or refuses, if told to) and counts admissions and add_tokens calls."""

    def __init__(self) -> None:
        self.admitted = 0
        self.tokens: list[int] = []
        self.refuse: Exception | None = None

    async def admit(self, principal: Principal) -> Decision:
        if self.refuse is not None:
            raise self.refuse
        self.admitted += 1
        return UNLIMITED

    async def add_tokens(self, principal: Principal, tokens: int) -> None:
        self.tokens.append(tokens)

    async def aclose(self) -> None:
        return None

    @property
    def balanced(self) -> bool:
        """Every admission was matched by exactly one add_tokens."""
        return self.admitted == len(self.tokens)


class ScriptedProvider:
    """Replays a script of events (an exception in it is raised at that point); records whether its
    run was closed. Its plan's bound is ``bound``."""

    def __init__(self, script: list[ProviderEvent | Exception], bound: Bound | None = None) -> None:
        self.script = script
        self.bound = bound or Bound(5, 16)
        self.closed = False
        self.ran = 0

    async def start(self) -> None:
        return None

    def prepare(self, request: ChatCompletionRequest) -> Plan:
        return Plan(request, self.bound)

    async def run(self, plan: Plan) -> AsyncGenerator[ProviderEvent, None]:
        self.ran += 1
        try:
            for event in self.script:
                if isinstance(event, Exception):
                    raise event
                yield event
        finally:
            self.closed = True

    def stats(self) -> dict[str, int]:
        return {}

    def health(self) -> list[dict[str, object]]:
        return []

    async def aclose(self) -> None:
        return None
