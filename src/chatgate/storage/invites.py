"""Invite codes: stored by their hash, used up one sign-up at a time."""

from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatgate.storage.tables import Invite
from chatgate.storage.users import now


async def insert(
    session: AsyncSession,
    *,
    code_hash: str,
    prefix: str,
    note: str,
    max_uses: int,
    expires_at: datetime | None,
) -> Invite:
    invite = Invite(
        code_hash=code_hash,
        prefix=prefix,
        note=note,
        max_uses=max_uses,
        uses=0,
        created_at=now(),
        expires_at=expires_at,
    )
    session.add(invite)
    await session.flush()
    return invite


def _usable(code_hash: str, at: datetime) -> list[object]:
    return [
        Invite.code_hash == code_hash,
        Invite.uses < Invite.max_uses,
        Invite.revoked_at.is_(None),
        or_(Invite.expires_at.is_(None), Invite.expires_at > at),
    ]


async def usable(session: AsyncSession, *, code_hash: str) -> bool:
    """Whether the code may still be used (checked again, and used, by ``consume``)."""
    found = await session.execute(select(Invite.id).where(*_usable(code_hash, now())))  # type: ignore[arg-type]
    return found.first() is not None


async def consume(session: AsyncSession, *, code_hash: str) -> int | None:
    """Use the code once: its id, or None if it is unknown, used up, expired or revoked."""
    invite_id = (await session.execute(select(Invite.id).where(Invite.code_hash == code_hash))).scalar()
    if invite_id is None:
        return None
    changed = await session.execute(
        update(Invite)
        .where(Invite.id == invite_id, *_usable(code_hash, now()))  # type: ignore[arg-type]
        .values(uses=Invite.uses + 1)
    )
    return int(invite_id) if changed.rowcount else None  # type: ignore[attr-defined]


async def list_all(session: AsyncSession, *, limit: int, offset: int) -> list[Invite]:
    result = await session.execute(select(Invite).order_by(Invite.id.desc()).limit(limit).offset(offset))
    return list(result.scalars())


async def by_id(session: AsyncSession, *, invite_id: int) -> Invite | None:
    return await session.get(Invite, invite_id)


async def revoke(session: AsyncSession, *, invite_id: int) -> None:
    await session.execute(
        update(Invite).where(Invite.id == invite_id, Invite.revoked_at.is_(None)).values(revoked_at=now())
    )
