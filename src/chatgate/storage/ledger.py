"""Credit movements: atomic reservations against the balance and the token's cap, and settlements.

Each function runs inside the caller's transaction; a reservation that cannot be covered changes
nothing. Every movement is a ledger row keyed by (trace id, kind), so a repeated trace id is refused
instead of charged twice.
"""

from sqlalchemy import func, select, update
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


async def settle(
    session: AsyncSession, *, user_id: int, token_id: int | None, trace_id: str, refund: int
) -> None:
    """Give back what a reservation did not use."""
    if refund:
        await session.execute(update(User).where(User.id == user_id).values(credits=User.credits + refund))
        if token_id is not None:
            await session.execute(
                update(ApiToken).where(ApiToken.id == token_id).values(spent=ApiToken.spent - refund)
            )
    session.add(
        LedgerEntry(
            trace_id=trace_id,
            kind="settle",
            user_id=user_id,
            token_id=token_id,
            amount=refund,
            created_at=now(),
        )
    )


async def request_total(session: AsyncSession, *, user_id: int | None = None) -> int:
    """The net of every request's reserve and settle rows (grants excluded): minus what was spent."""
    query = select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
        LedgerEntry.kind.in_(("reserve", "settle"))
    )
    if user_id is not None:
        query = query.where(LedgerEntry.user_id == user_id)
    return int((await session.execute(query)).scalar_one())
