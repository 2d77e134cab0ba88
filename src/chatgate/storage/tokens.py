"""Queries over API tokens (stored as a hash; the secret itself is never kept)."""

from datetime import datetime

from sqlalchemy import case, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatgate.storage.tables import ApiToken
from chatgate.storage.users import now


async def insert(
    session: AsyncSession,
    *,
    user_id: int,
    name: str,
    prefix: str,
    secret_hash: str,
    expires_at: datetime | None,
    allowed_models: list[str] | None,
    quota_cap: int | None,
    rpm_limit: int | None,
    tpm_limit: int | None,
) -> ApiToken:
    token = ApiToken(
        user_id=user_id,
        name=name,
        prefix=prefix,
        secret_hash=secret_hash,
        created_at=now(),
        expires_at=expires_at,
        allowed_models=allowed_models,
        quota_cap=quota_cap,
        spent=0,
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
    )
    session.add(token)
    await session.flush()
    return token


async def of_user(session: AsyncSession, *, user_id: int) -> list[ApiToken]:
    result = await session.execute(select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id))
    return list(result.scalars())


async def count_live(session: AsyncSession, *, user_id: int) -> int:
    """The user's tokens neither revoked nor expired."""
    query = select(func.count(ApiToken.id)).where(
        ApiToken.user_id == user_id,
        ApiToken.revoked_at.is_(None),
        or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > now()),
    )
    return int((await session.execute(query)).scalar_one())


async def by_id(session: AsyncSession, *, token_id: int) -> ApiToken | None:
    return await session.get(ApiToken, token_id)


async def revoke(session: AsyncSession, *, token_id: int) -> bool:
    result = await session.execute(
        update(ApiToken)
        .where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=now())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def rename(session: AsyncSession, *, token_id: int, name: str) -> None:
    await session.execute(update(ApiToken).where(ApiToken.id == token_id).values(name=name))


async def touch(session: AsyncSession, *, last_used: dict[int, datetime]) -> None:
    """Record last-use times for many tokens in one statement."""
    if last_used:
        await session.execute(
            update(ApiToken)
            .where(ApiToken.id.in_(last_used))
            .values(last_used_at=case(last_used, value=ApiToken.id))
        )


async def by_prefix(session: AsyncSession, *, prefix: str) -> list[ApiToken]:
    result = await session.execute(
        select(ApiToken).where(ApiToken.prefix.startswith(prefix, autoescape=True))
    )
    return list(result.scalars())


async def revoke_all(session: AsyncSession, *, user_id: int) -> None:
    """Revoke every token of a user and drop their names (a deleted account's personal data)."""
    await session.execute(
        update(ApiToken)
        .where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=now())
    )
    await session.execute(update(ApiToken).where(ApiToken.user_id == user_id).values(name="deleted"))
