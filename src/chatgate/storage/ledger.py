"""Credit movements after the reservation: settlements, and the totals of what requests spent.

Reservations, which take credits before a request runs, are on every request's path and live in
the fast paths (``fastpath`` for SQLite, ``fastpath_postgres``). Settlements only give credits
back, so they are applied later, in batches, inside the caller's transaction, without any risk of
overspending. Every movement is a ledger row keyed by (trace id, kind), so a repeated trace id is
refused instead of charged twice.
"""

from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatgate.storage.tables import ApiToken, LedgerEntry, User
from chatgate.storage.users import now


@dataclass(frozen=True)
class Refund:
    """What a settled request gives back of its reservation (0 when it used it all)."""

    user_id: int
    token_id: int | None
    trace_id: str
    amount: int


async def settle_many(session: AsyncSession, *, refunds: list[Refund]) -> None:
    """Apply many settlements at once: one insert for the rows, one update per user and per token."""
    if not refunds:
        return
    per_user: dict[int, int] = defaultdict(int)
    per_token: dict[int, int] = defaultdict(int)
    for refund in refunds:
        per_user[refund.user_id] += refund.amount
        if refund.token_id is not None:
            per_token[refund.token_id] += refund.amount
    # The rows first, the balances last: a balance's row lock (which reservations wait on) is then
    # held only from these updates to the commit, not while the batch's rows go in.
    created = now()
    await session.execute(
        insert(LedgerEntry),
        [
            {
                "trace_id": r.trace_id,
                "kind": "settle",
                "user_id": r.user_id,
                "token_id": r.token_id,
                "amount": r.amount,
                "created_at": created,
            }
            for r in refunds
        ],
    )
    for user_id, amount in sorted(per_user.items()):  # always in one order: no deadlocks between replicas
        if amount:
            await session.execute(
                update(User).where(User.id == user_id).values(credits=User.credits + amount)
            )
    for token_id, amount in sorted(per_token.items()):
        if amount:
            await session.execute(
                update(ApiToken).where(ApiToken.id == token_id).values(spent=ApiToken.spent - amount)
            )


async def request_total(session: AsyncSession, *, user_id: int | None = None) -> int:
    """The net of every request's reserve and settle rows (grants excluded): minus what was spent."""
    query = select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
        LedgerEntry.kind.in_(("reserve", "settle"))
    )
    if user_id is not None:
        query = query.where(LedgerEntry.user_id == user_id)
    return int((await session.execute(query)).scalar_one())
