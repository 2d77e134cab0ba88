"""The audit log: who did what to whom, and when (admins, the operator's CLI, chatgate itself)."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from chatgate.storage import audit
from chatgate.storage.database import Database


@dataclass(frozen=True)
class Actor:
    """Who acts: an admin (by user id), the operator at the command line, or chatgate on its own."""

    kind: str  # admin | operator | chatgate
    user_id: int | None = None

    @classmethod
    def admin(cls, user_id: int) -> "Actor":
        return cls("admin", user_id)


OPERATOR = Actor("operator")
CHATGATE = Actor("chatgate")


async def record(
    session: AsyncSession, actor: Actor, action: str, target: str, detail: dict[str, Any] | None = None
) -> None:
    """Append an entry inside the caller's transaction: it is written with the action, or not at all."""
    await audit.insert(
        session, actor_id=actor.user_id, actor=actor.kind, action=action, target=target, detail=detail
    )


class AuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def page(
        self,
        *,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        async with self._db.sessions() as session:
            rows, total = await audit.page(
                session, action=action, since=since, until=until, limit=limit, offset=offset
            )
        return {
            "total": total,
            "data": [
                {
                    "id": entry.id,
                    "time": entry.created_at.isoformat(),
                    "actor": entry.actor,
                    "actor_id": entry.actor_id,
                    "actor_email": email,
                    "action": entry.action,
                    "target": entry.target,
                    "detail": entry.detail,
                }
                for entry, email in rows
            ],
        }
