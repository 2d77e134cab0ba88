"""Credit movements: atomic reservations against the balance and the token's cap, and settlements.

Each function runs inside the caller's transaction; a reservation that cannot be covered changes
nothing. Settlements only give credits back, so they can be applied later, in batches, without
any risk of overspending. Every movement is a ledger row keyed by (trace id, kind), so a repeated trace id is refused
instead of charged twice.
"""

from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatgate.storage.tables import ApiToken, LedgerEntry, User
from chatgate.storage.users import now


async def reserve(
    session: AsyncSession, *, user_id: int, token_id: int | None, trace_id: str, amount: int
) -> bool:
    """Take ``amount`` credits from the user's balance and the token's cap.

    False means it could not be covered; the caller must then abandon the transaction.
    """
    taken = await session.execute(
        update(User).where(User.id == user_id, User.credits >= amount).values(credits=User.credits - amount)
    )
    if not taken.rowcount:  # type: ignore[attr-defined]
        return False
    if token_id is not None:
        capped = await session.execute(
            update(ApiToken)
            .where(
                ApiToken.id == token_id,
                (ApiToken.quota_cap.is_(None)) | (ApiToken.spent + amount <= ApiToken.quota_cap),
            )
            .values(spent=ApiToken.spent + amount)
        )
        if not capped.rowcount:  # type: ignore[attr-defined]
            return False  # the caller raises, and its transaction undoes the balance update
    session.add(
        LedgerEntry(
            trace_id=trace_id,
            kind="reserve",
            user_id=user_id,
            token_id=token_id,
            amount=-amount,
            created_at=now(),
        )
    )
    await session.flush()
    return True


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
