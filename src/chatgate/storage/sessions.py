"""Browser sessions, stored by the hash of their cookie."""

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from chatgate.storage.tables import User, WebSession


async def insert(
    session: AsyncSession,
    *,
    id_hash: str,
    user_id: int,
    csrf_token: str,
    created_at: datetime,
    expires_at: datetime,
) -> None:
    session.add(
        WebSession(
            id_hash=id_hash,
            user_id=user_id,
            csrf_token=csrf_token,
            created_at=created_at,
            expires_at=expires_at,
        )
    )


async def with_user(session: AsyncSession, *, id_hash: str) -> tuple[WebSession, User] | None:
    row = (
        await session.execute(
            select(WebSession, User)
            .join(User, User.id == WebSession.user_id)
            .where(WebSession.id_hash == id_hash)
        )
    ).one_or_none()
    return (row[0], row[1]) if row else None


async def remove(
    session: AsyncSession,
    *,
    id_hash: str | None = None,
    user_id: int | None = None,
    keep: str | None = None,
) -> None:
    """Remove one session (by ``id_hash``) or a user's, all of them or all but ``keep``."""
    query = delete(WebSession)
    if id_hash is not None:
        query = query.where(WebSession.id_hash == id_hash)
    if user_id is not None:
        query = query.where(WebSession.user_id == user_id)
    if keep is not None:
        query = query.where(WebSession.id_hash != keep)
    await session.execute(query)
