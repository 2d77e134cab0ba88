"""Links sent by email (address verification, password reset), kept by the hash of their secret."""

from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatgate.storage.tables import EmailToken
from chatgate.storage.users import now


async def insert(
    session: AsyncSession, *, token_hash: str, user_id: int, purpose: str, expires_at: datetime
) -> None:
    session.add(
        EmailToken(
            token_hash=token_hash, user_id=user_id, purpose=purpose, created_at=now(), expires_at=expires_at
        )
    )


async def take(session: AsyncSession, *, token_hash: str, purpose: str) -> int | None:
    """The user a live link belongs to, marking it used; None if unknown, used or expired.

    The update is conditional, so of two uses at once only one gets the user.
    """
    row = await session.get(EmailToken, token_hash)
    if row is None or row.purpose != purpose or row.used_at is not None or row.expires_at <= now():
        return None
    used = await session.execute(
        update(EmailToken)
        .where(EmailToken.token_hash == token_hash, EmailToken.used_at.is_(None))
        .values(used_at=now())
    )
    return row.user_id if used.rowcount else None  # type: ignore[attr-defined]


async def sent_since(session: AsyncSession, *, user_id: int, purpose: str, since: datetime) -> int:
    query = select(func.count()).where(
        EmailToken.user_id == user_id, EmailToken.purpose == purpose, EmailToken.created_at >= since
    )
    return int((await session.execute(query)).scalar_one())


async def remove(session: AsyncSession, *, user_id: int, purpose: str | None = None) -> None:
    query = delete(EmailToken).where(EmailToken.user_id == user_id)
    if purpose is not None:
        query = query.where(EmailToken.purpose == purpose)
    await session.execute(query)
