"""The audit log of admin actions: appended to in the same transaction as the action it records."""

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from chatgate.storage.tables import AuditEntry, User
from chatgate.storage.users import now


async def insert(
    session: AsyncSession,
    *,
    actor_id: int | None,
    actor: str,
    action: str,
    target: str,
    detail: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditEntry(
            created_at=now(),
            actor_id=actor_id,
            actor=actor,
            action=action,
            target=target[:200],
            detail=detail or {},
        )
    )


async def page(
    session: AsyncSession,
    *,
    action: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    offset: int,
) -> tuple[list[tuple[AuditEntry, str | None]], int]:
    """Newest first, each with the acting admin's email (None for the CLI and chatgate itself)."""
    conditions = []
    if action:
        conditions.append(AuditEntry.action.startswith(action, autoescape=True))
    if since is not None:
        conditions.append(AuditEntry.created_at >= since)
    if until is not None:
        conditions.append(AuditEntry.created_at < until)
    query = (
        select(AuditEntry, User.email)
        .outerjoin(User, User.id == AuditEntry.actor_id)
        .where(*conditions)
        .order_by(AuditEntry.id.desc())
        .limit(limit)
        .offset(offset)
    )
    rows: list[tuple[AuditEntry, str | None]] = [(row[0], row[1]) for row in await session.execute(query)]
    total = int((await session.execute(select(func.count(AuditEntry.id)).where(*conditions))).scalar_one())
    return rows, total
