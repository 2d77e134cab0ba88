"""Quota accounting: reserve the most a call can cost before it runs, settle the real cost after.

Balances are integer credits; prices are credits per million tokens, rounded up per request.
The master key is not metered.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from chatgate.config import Price
from chatgate.errors import Conflict, InsufficientQuota
from chatgate.services.auth import Principal
from chatgate.storage.database import Database
from chatgate.storage.fastpath import DuplicateReservation
from chatgate.storage.ledger import Refund

PER = 1_000_000


def cost(price: Price, prompt_tokens: int, completion_tokens: int) -> int:
    """Credits for a call, rounded up: a request that used tokens is never free unless priced at 0."""
    return -(-(prompt_tokens * price.prompt + completion_tokens * price.completion) // PER)


@dataclass(frozen=True)
class Reservation:
    principal: Principal
    trace_id: str
    price: Price
    amount: int


def _insufficient(amount: int) -> InsufficientQuota:
    return InsufficientQuota(
        f"You exceeded your current quota: this request could cost up to {amount} credits, more than the "
        "balance (or this token's cap) has left. Lower max_tokens or add credits."
    )


def _duplicate(trace_id: str) -> Conflict:
    return Conflict(
        f"A request with id {trace_id} was already charged; send a new x-request-id.",
        code="duplicate_request",
    )


class QuotaService:
    def __init__(self, db: Database, *, flush_refunds: Callable[[], Awaitable[None]] | None = None) -> None:
        self._db = db
        self._flush_refunds = flush_refunds

    async def reserve(
        self,
        principal: Principal,
        trace_id: str,
        price: Price,
        prompt_tokens: int,
        max_completion_tokens: int,
        extra_cost: int = 0,
    ) -> Reservation:
        amount = cost(price, prompt_tokens, max_completion_tokens) + extra_cost
        reservation = Reservation(principal, trace_id, price, amount)
        if principal.user_id is None:
            return reservation
        try:
            await self._take(principal, trace_id, amount)
        except InsufficientQuota:
            if self._flush_refunds is None:
                raise
            await self._flush_refunds()  # credits still waiting to be given back may cover it
            await self._take(principal, trace_id, amount)
        return reservation

    async def _take(self, principal: Principal, trace_id: str, amount: int) -> None:
        assert principal.user_id is not None
        try:
            covered = await self._db.fast.reserve(
                user_id=principal.user_id, token_id=principal.token_id, trace_id=trace_id, amount=amount
            )
        except DuplicateReservation as exc:
            raise _duplicate(trace_id) from exc
        if not covered:
            raise _insufficient(amount)

    def settle(
        self, reservation: Reservation, prompt_tokens: int, completion_tokens: int, extra_cost: int = 0
    ) -> tuple[int, Refund | None]:
        """The charge for what was used (at most what was reserved) and the refund of the rest.

        The refund is applied later, in a batch (see UsageRecorder): giving back late never
        lets anyone overspend.
        """
        full = cost(reservation.price, prompt_tokens, completion_tokens) + extra_cost
        principal = reservation.principal
        if principal.user_id is None:
            return full, None
        charged = min(full, reservation.amount)
        refund = Refund(
            principal.user_id, principal.token_id, reservation.trace_id, reservation.amount - charged
        )
        return charged, refund
