"""Queries over users and their balances."""

from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatgate import ranges
from chatgate.storage.tables import LedgerEntry, User


def now() -> datetime:
    return datetime.now(UTC)


# The most credits a balance holds (or one grant moves): far past any real use, and far enough
# below a 64-bit integer's limit that no sum of balances or grants reaches it (past it, SQLite
# silently stores a float and PostgreSQL refuses the update).
MAX_CREDITS = ranges.MAX_CREDITS  # the shared ranges' bound


async def by_email(session: AsyncSession, *, email: str) -> User | None:
    result = await session.execute(select(User).where(User.email == email))
    return result.scalar_one_or_none()


async def by_id(session: AsyncSession, *, user_id: int) -> User | None:
    return await session.get(User, user_id)


async def insert(
    session: AsyncSession,
    *,
    email: str,
    password_hash: str | None,
    credits: int,
    is_admin: bool = False,
    verified: bool = True,
    invite_id: int | None = None,
) -> User:
    created = now()
    user = User(
        email=email,
        password_hash=password_hash,
        credits=0,
        is_admin=is_admin,
        created_at=created,
        email_verified_at=created if verified else None,
        group_name="default",
        invite_id=invite_id,
    )
    session.add(user)
    await session.flush()
    if credits:
        await grant(session, user_id=user.id, credits=credits, trace_id=f"signup_{user.id}")
    return user


async def grant(
    session: AsyncSession, *, user_id: int, credits: int, trace_id: str, kind: str = "grant"
) -> bool:
    """Add (or, negative, remove) credits, with its ledger row (``kind``: grant, or redeem for a
    top-up code); False if it would leave less than zero or more than ``MAX_CREDITS``. ``credits``
    itself is at most ``MAX_CREDITS`` either way."""
    assert -MAX_CREDITS <= credits <= MAX_CREDITS
    changed = await session.execute(
        update(User)
        .where(User.id == user_id, User.credits + credits >= 0, User.credits + credits <= MAX_CREDITS)
        .values(credits=User.credits + credits)
    )
    if not changed.rowcount:  # type: ignore[attr-defined]
        return False
    session.add(
        LedgerEntry(
            trace_id=trace_id, kind=kind, user_id=user_id, token_id=None, amount=credits, created_at=now()
        )
    )
    return True


async def set_limits(session: AsyncSession, *, user_id: int, limits: dict[str, int | None]) -> None:
    """Set some of ``rpm_limit``, ``tpm_limit``, ``concurrency_limit`` (None: the server's default)."""
    if limits:
        await session.execute(update(User).where(User.id == user_id).values(**limits))


async def lock(session: AsyncSession, *, user_id: int) -> None:
    """Take the user's row lock for the rest of the transaction (a write lock on SQLite), so checks
    made after it (how many tokens the user holds) can't race another transaction's."""
    await session.execute(update(User).where(User.id == user_id).values(id=User.id))


async def list_all(session: AsyncSession, *, limit: int = 100, offset: int = 0) -> list[User]:
    result = await session.execute(select(User).order_by(User.id).limit(limit).offset(offset))
    return list(result.scalars())


async def count(session: AsyncSession) -> int:
    return int((await session.execute(select(func.count()).select_from(User))).scalar_one())


async def anonymise(session: AsyncSession, *, user_id: int) -> None:
    """A deleted account: its email and password are gone; the row stays, so the ledger and the usage
    log still add up, under a placeholder that names no one."""
    await session.execute(
        update(User)
        .where(User.id == user_id)
        .values(
            email=f"deleted-{user_id}@deleted.invalid",
            password_hash=None,
            disabled=True,
            deleted_at=now(),
        )
    )
