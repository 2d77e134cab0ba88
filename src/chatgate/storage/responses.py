"""Stored Responses API answers: kept per user, read back only by their owner, gone once expired."""

from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from chatgate.storage.tables import StoredResponse


def _owned(query: Any, *, user_id: int | None) -> Any:
    """A user's own rows; the master key (no user) sees only what it stored itself."""
    owner = StoredResponse.user_id.is_(None) if user_id is None else StoredResponse.user_id == user_id
    return query.where(owner)


async def insert_one(session: AsyncSession, *, row: dict[str, Any]) -> None:
    await session.execute(insert(StoredResponse), [row])


async def get(
    session: AsyncSession, *, response_id: str, user_id: int | None, now: datetime
) -> StoredResponse | None:
    query = _owned(select(StoredResponse), user_id=user_id).where(
        StoredResponse.id == response_id, StoredResponse.expires_at > now
    )
    found: StoredResponse | None = (await session.execute(query)).scalar_one_or_none()
    return found


async def delete_one(session: AsyncSession, *, response_id: str, user_id: int | None, now: datetime) -> bool:
    query = _owned(delete(StoredResponse), user_id=user_id).where(
        StoredResponse.id == response_id, StoredResponse.expires_at > now
    )
    result: Any = await session.execute(query)
    return bool(result.rowcount)


async def sweep(session: AsyncSession, *, now: datetime) -> int:
    """Deletes every expired response; how many went."""
    result: Any = await session.execute(delete(StoredResponse).where(StoredResponse.expires_at <= now))
    return int(result.rowcount or 0)
