"""Redemption codes: created in batches, redeemed once (a conditional update), listed for admins."""

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatgate.storage.tables import RedemptionCode, User
from chatgate.storage.users import now


async def insert_many(
    session: AsyncSession,
    *,
    codes: list[tuple[str, str]],
    credits: int,
    note: str | None,
    expires_at: datetime | None,
    created_by: int | None,
) -> None:
    """``codes``: (hash, hint) pairs."""
    created = now()
    session.add_all(
        RedemptionCode(
            code_hash=code_hash,
            hint=hint,
            credits=credits,
            note=note,
            created_at=created,
            created_by=created_by,
            expires_at=expires_at,
        )
        for code_hash, hint in codes
    )
    await session.flush()


async def take(session: AsyncSession, *, code_hash: str, user_id: int) -> tuple[int, int] | None:
    """Mark a live code redeemed by ``user_id``: its id and credits; None if it is not live
    (unknown, used, disabled or expired).

    One statement (an UPDATE whose WHERE holds the rule, RETURNING what it took), so of two
    redemptions at once, on any replica, exactly one gets the code: PostgreSQL re-checks the
    condition against the row's newest version once the first commits, and SQLite runs one writer
    at a time. (RETURNING needs SQLite 3.35 or later.)
    """
    at = now()
    taken = await session.execute(
        update(RedemptionCode)
        .where(
            RedemptionCode.code_hash == code_hash,
            RedemptionCode.redeemed_at.is_(None),
            RedemptionCode.disabled_at.is_(None),
            (RedemptionCode.expires_at.is_(None)) | (RedemptionCode.expires_at > at),
        )
        .values(redeemed_at=at, redeemed_by=user_id)
        .returning(RedemptionCode.id, RedemptionCode.credits)
    )
    row = taken.one_or_none()
    return None if row is None else (int(row[0]), int(row[1]))


async def by_hash(session: AsyncSession, *, code_hash: str) -> RedemptionCode | None:
    result = await session.execute(select(RedemptionCode).where(RedemptionCode.code_hash == code_hash))
    return result.scalar_one_or_none()


def _state(state: str | None, at: datetime) -> list[Any]:
    c = RedemptionCode
    live = [c.redeemed_at.is_(None), c.disabled_at.is_(None)]
    conditions: dict[str | None, list[Any]] = {
        None: [],
        "used": [c.redeemed_at.is_not(None)],
        "disabled": [c.disabled_at.is_not(None), c.redeemed_at.is_(None)],
        "expired": [*live, c.expires_at.is_not(None), c.expires_at <= at],
        "unused": [*live, (c.expires_at.is_(None)) | (c.expires_at > at)],
    }
    return conditions[state]


async def page(
    session: AsyncSession, *, state: str | None, limit: int, offset: int
) -> tuple[list[tuple[RedemptionCode, str | None]], int]:
    """Codes newest first with the redeemer's email, filtered by state, and how many match."""
    conditions = _state(state, now())
    query = (
        select(RedemptionCode, User.email)
        .outerjoin(User, User.id == RedemptionCode.redeemed_by)
        .where(*conditions)
        .order_by(RedemptionCode.id.desc())
        .limit(limit)
        .offset(offset)
    )
    rows: list[tuple[RedemptionCode, str | None]] = [(r[0], r[1]) for r in await session.execute(query)]
    total = int(
        (await session.execute(select(func.count(RedemptionCode.id)).where(*conditions))).scalar_one()
    )
    return rows, total


async def disable(session: AsyncSession, *, code_id: int) -> bool:
    """Disable an unused code; False if there is none such (unknown, used, or disabled already)."""
    changed = await session.execute(
        update(RedemptionCode)
        .where(
            RedemptionCode.id == code_id,
            RedemptionCode.redeemed_at.is_(None),
            RedemptionCode.disabled_at.is_(None),
        )
        .values(disabled_at=now())
    )
    return bool(changed.rowcount)  # type: ignore[attr-defined]
