"""Quota accounting: reserve the most a call can cost before it runs, settle the real cost after.

Balances are integer credits; prices are credits per million tokens, rounded up per request.
The master key is not metered.
"""

from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from chatgate.config import Price
from chatgate.errors import Conflict, InsufficientQuota
from chatgate.services.auth import Principal
from chatgate.storage import ledger
from chatgate.storage.database import Database

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


class QuotaService:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def reserve(
        self,
        principal: Principal,
        trace_id: str,
        price: Price,
        prompt_tokens: int,
        max_completion_tokens: int,
    ) -> Reservation:
        amount = cost(price, prompt_tokens, max_completion_tokens)
        reservation = Reservation(principal, trace_id, price, amount)
        if principal.user_id is None:
            return reservation
        try:
            async with self._db.transaction() as session:
                covered = await ledger.reserve(
                    session,
                    user_id=principal.user_id,
                    token_id=principal.token_id,
                    trace_id=trace_id,
                    amount=amount,
                )
                if not covered:
                    raise InsufficientQuota(
                        f"You exceeded your current quota: this request could cost up to {amount} credits, more "
                        "than the balance (or this token's cap) has left. Lower max_tokens or add credits."
                    )
        except IntegrityError as exc:
            raise Conflict(
                f"A request with id {trace_id} was already charged; send a new x-request-id.",
                code="duplicate_request",
            ) from exc
        return reservation

    async def settle(self, reservation: Reservation, prompt_tokens: int, completion_tokens: int) -> int:
        """Charge what was used (at most what was reserved), give back the rest; returns the charge."""
        charged = min(cost(reservation.price, prompt_tokens, completion_tokens), reservation.amount)
        principal = reservation.principal
        if principal.user_id is None:
            return cost(reservation.price, prompt_tokens, completion_tokens)
        async with self._db.transaction() as session:
            await ledger.settle(
                session,
                user_id=principal.user_id,
                token_id=principal.token_id,
                trace_id=reservation.trace_id,
                refund=reservation.amount - charged,
            )
        return charged
