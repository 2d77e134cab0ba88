"""The request log across every user, for admins: filtered, paged, and read in batches for export."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from chatgate.storage.tables import ApiToken, UsageRecord, User


@dataclass(frozen=True)
class Filters:
    user_id: int | None = None
    token_id: int | None = None
    model: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def conditions(self) -> list[Any]:
        found: list[Any] = []
        if self.user_id is not None:
            found.append(UsageRecord.user_id == self.user_id)
        if self.token_id is not None:
            found.append(UsageRecord.token_id == self.token_id)
        if self.model:
            found.append(UsageRecord.model == self.model)
        if self.status:
            found.append(UsageRecord.status == self.status)
        if self.since is not None:
            found.append(UsageRecord.created_at >= self.since)
        if self.until is not None:
            found.append(UsageRecord.created_at < self.until)
        return found


Row = tuple[UsageRecord, str | None, str | None]  # the request, its user's email, its token's prefix


def _select(filters: Filters) -> Any:
    return (
        select(UsageRecord, User.email, ApiToken.prefix)
        .outerjoin(User, User.id == UsageRecord.user_id)
        .outerjoin(ApiToken, ApiToken.id == UsageRecord.token_id)
        .where(*filters.conditions())
    )


async def page(session: AsyncSession, *, filters: Filters, limit: int, offset: int) -> tuple[list[Row], int]:
    """One page, newest first, and how many rows match in all."""
    query = _select(filters).order_by(UsageRecord.id.desc()).limit(limit).offset(offset)
    rows: list[Row] = [(r[0], r[1], r[2]) for r in await session.execute(query)]
    counted = select(func.count(UsageRecord.id)).where(*filters.conditions())
    return rows, int((await session.execute(counted)).scalar_one())


async def batch(session: AsyncSession, *, filters: Filters, before_id: int | None, size: int) -> list[Row]:
    """Up to ``size`` rows older than ``before_id``, newest first: the export walks the log this way."""
    query = _select(filters)
    if before_id is not None:
        query = query.where(UsageRecord.id < before_id)
    return [
        (r[0], r[1], r[2]) for r in await session.execute(query.order_by(UsageRecord.id.desc()).limit(size))
    ]
