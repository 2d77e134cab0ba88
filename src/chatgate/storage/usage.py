"""The usage log: its rows, batched inserts, and the totals the API and the console show."""

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from chatgate.storage.tables import UsageRecord


@dataclass(frozen=True)
class UsageRow:
    """One request as the usage log keeps it."""

    trace_id: str
    user_id: int | None  # None: the operator's master key
    token_id: int | None
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: int  # credits charged
    latency_ms: int
    status: str  # ok | cancelled | error
    error_code: str | None
    created_at: datetime  # aware, UTC
    # The price it was charged at: the catalogue's credits per million prompt and completion tokens,
    # and the caller's group multiplier in thousandths (None for a refusal: it cost nothing).
    price_prompt: int | None = None
    price_completion: int | None = None
    price_multiplier: int | None = None
    api: str = "chat.completions"  # chat.completions, responses, messages, images.generations...

    def values(self) -> dict[str, Any]:
        """The row's columns, with the UTC day it is counted under."""
        return {**asdict(self), "day": self.created_at.date().isoformat()}


@dataclass(frozen=True)
class Totals:
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: int


async def insert_many(session: AsyncSession, *, rows: list[dict[str, Any]]) -> None:
    if rows:
        await session.execute(insert(UsageRecord), rows)


def _scope(query: Any, *, user_id: int | None, token_id: int | None) -> Any:
    if user_id is not None:
        query = query.where(UsageRecord.user_id == user_id)
    if token_id is not None:
        query = query.where(UsageRecord.token_id == token_id)
    return query


_SUMS = (
    func.count(UsageRecord.id),
    func.coalesce(func.sum(UsageRecord.prompt_tokens), 0),
    func.coalesce(func.sum(UsageRecord.completion_tokens), 0),
    func.coalesce(func.sum(UsageRecord.cost), 0),
)


async def totals(session: AsyncSession, *, user_id: int | None = None, token_id: int | None = None) -> Totals:
    row = (await session.execute(_scope(select(*_SUMS), user_id=user_id, token_id=token_id))).one()
    return Totals(*(int(v) for v in row))


async def totals_by(
    session: AsyncSession, *, column: str, user_id: int | None = None, token_id: int | None = None
) -> dict[str, Totals]:
    """Totals grouped by ``day``, ``model`` or ``api``."""
    key = {"day": UsageRecord.day, "model": UsageRecord.model, "api": UsageRecord.api}[column]
    query = _scope(select(key, *_SUMS), user_id=user_id, token_id=token_id).group_by(key).order_by(key)
    return {str(row[0]): Totals(*(int(v) for v in row[1:])) for row in await session.execute(query)}


async def page(
    session: AsyncSession,
    *,
    user_id: int | None = None,
    token_id: int | None = None,
    model: str | None = None,
    status: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[UsageRecord], int]:
    """One page of the request log, newest first, and how many rows match in all."""
    query = _scope(select(UsageRecord), user_id=user_id, token_id=token_id)
    counted = _scope(select(func.count(UsageRecord.id)), user_id=user_id, token_id=token_id)
    if model:
        query, counted = query.where(UsageRecord.model == model), counted.where(UsageRecord.model == model)
    if status:
        query, counted = (
            query.where(UsageRecord.status == status),
            counted.where(UsageRecord.status == status),
        )
    rows = await session.execute(query.order_by(UsageRecord.id.desc()).limit(limit).offset(offset))
    total = int((await session.execute(counted)).scalar_one())
    return list(rows.scalars()), total
