"""Price groups and who is in them."""

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatgate.storage.tables import User, UserGroup
from chatgate.storage.users import now


async def all_with_members(session: AsyncSession) -> list[tuple[UserGroup, int]]:
    members = (
        select(User.group_name, func.count(User.id).label("n"))
        .where(User.deleted_at.is_(None))
        .group_by(User.group_name)
        .subquery()
    )
    rows = await session.execute(
        select(UserGroup, func.coalesce(members.c.n, 0))
        .outerjoin(members, members.c.group_name == UserGroup.name)
        .order_by(UserGroup.name)
    )
    return [(row[0], int(row[1])) for row in rows]


async def by_name(session: AsyncSession, *, name: str) -> UserGroup | None:
    return await session.get(UserGroup, name)


async def insert(
    session: AsyncSession, *, name: str, multiplier: int, models: list[str] | None, description: str | None
) -> UserGroup:
    group = UserGroup(
        name=name, multiplier=multiplier, models=models, description=description, created_at=now()
    )
    session.add(group)
    await session.flush()
    return group


async def move(session: AsyncSession, *, user_id: int, group: str) -> bool:
    changed = await session.execute(update(User).where(User.id == user_id).values(group_name=group))
    return bool(changed.rowcount)  # type: ignore[attr-defined]
