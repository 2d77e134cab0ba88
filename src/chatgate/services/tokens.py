"""API tokens: issued once in the clear, kept only as a hash; listed, renamed, revoked by their owner."""

import secrets
from collections.abc import Container
from dataclasses import dataclass
from datetime import datetime

from chatgate import ranges
from chatgate.errors import Conflict, InvalidRequest, NotFound
from chatgate.services.auth import hash_secret
from chatgate.storage import tokens, users
from chatgate.storage.database import Database
from chatgate.storage.tables import ApiToken

PREFIX_LENGTH = 10  # "sk-" and 7 more characters, enough to tell tokens apart in a list
MAX_NAME = 100


@dataclass(frozen=True)
class TokenInfo:
    id: int
    user_id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    allowed_models: list[str] | None
    quota_cap: int | None
    spent: int
    rpm_limit: int | None
    tpm_limit: int | None

    @classmethod
    def of(cls, row: ApiToken) -> "TokenInfo":
        return cls(
            row.id, row.user_id, row.name, row.prefix, row.created_at, row.last_used_at, row.expires_at,
            row.revoked_at, row.allowed_models, row.quota_cap, row.spent, row.rpm_limit, row.tpm_limit,
        )  # fmt: skip


def new_secret() -> str:
    return "sk-" + secrets.token_urlsafe(36).replace("-", "A").replace("_", "B")


def _name(name: str) -> str:
    if not name.strip() or len(name) > MAX_NAME:
        raise InvalidRequest(f"A token name has 1 to {MAX_NAME} characters.", param="name")
    return name.strip()


class TokenService:
    def __init__(self, db: Database, *, models: Container[str], max_live: int) -> None:
        self._db = db
        self._models = models  # the catalogue's model names and aliases
        self._max_live = max_live  # live (neither revoked nor expired) tokens per user

    def _allowed(self, allowed_models: list[str] | None) -> list[str] | None:
        """An allow-list of catalogue names only, each once, at most ranges.ALLOWED_MODELS of them."""
        if allowed_models is None:
            return None
        limits = ranges.ALLOWED_MODELS
        if not limits.low <= len(allowed_models) <= limits.high:
            raise InvalidRequest(
                f"allowed_models names {limits.low} to {limits.high} models (got {len(allowed_models)}).",
                param="allowed_models",
            )
        for index, name in enumerate(allowed_models):
            if name not in self._models:
                shown = name if len(name) <= 100 else name[:100] + "..."
                raise InvalidRequest(
                    f"allowed_models[{index}]: {shown!r} is not a model of this server.",
                    param=f"allowed_models[{index}]",
                )
        return list(dict.fromkeys(allowed_models))

    async def create(
        self,
        user_id: int,
        *,
        name: str = "default",
        expires_at: datetime | None = None,
        allowed_models: list[str] | None = None,
        quota_cap: int | None = None,
        rpm_limit: int | None = None,
        tpm_limit: int | None = None,
    ) -> tuple[TokenInfo, str]:
        """A new token and its secret, which is shown this once and never stored."""
        name = _name(name)
        ranges.CREDITS.check_optional(quota_cap, "quota_cap")
        ranges.RPM.check_optional(rpm_limit, "rpm_limit")
        ranges.TPM.check_optional(tpm_limit, "tpm_limit")
        allowed_models = self._allowed(allowed_models)
        secret = new_secret()
        async with self._db.transaction() as session:
            await users.lock(session, user_id=user_id)  # two creations at once can't both pass the cap
            if await tokens.count_live(session, user_id=user_id) >= self._max_live:
                raise Conflict(
                    f"This account already has {self._max_live} live API tokens, the most it may hold; "
                    "revoke one first.",
                    code="too_many_tokens",
                )
            row = await tokens.insert(
                session,
                user_id=user_id,
                name=name,
                prefix=secret[:PREFIX_LENGTH],
                secret_hash=hash_secret(secret),
                expires_at=expires_at,
                allowed_models=allowed_models,
                quota_cap=quota_cap,
                rpm_limit=rpm_limit,
                tpm_limit=tpm_limit,
            )
            return TokenInfo.of(row), secret

    async def list(self, user_id: int) -> list[TokenInfo]:
        async with self._db.sessions() as session:
            return [TokenInfo.of(row) for row in await tokens.of_user(session, user_id=user_id)]

    async def _owned(self, user_id: int, token_id: int) -> TokenInfo:
        ranges.ID.check(token_id, "token_id")
        async with self._db.sessions() as session:
            row = await tokens.by_id(session, token_id=token_id)
        if row is None or row.user_id != user_id:  # another user's token is as good as missing
            raise NotFound("No such token.")
        return TokenInfo.of(row)

    async def revoke(self, user_id: int, token_id: int) -> TokenInfo:
        await self._owned(user_id, token_id)
        async with self._db.transaction() as session:
            await tokens.revoke(session, token_id=token_id)
        return await self._owned(user_id, token_id)

    async def rename(self, user_id: int, token_id: int, name: str) -> TokenInfo:
        await self._owned(user_id, token_id)
        name = _name(name)
        async with self._db.transaction() as session:
            await tokens.rename(session, token_id=token_id, name=name)
        return await self._owned(user_id, token_id)

    async def find(self, prefix_or_id: str) -> TokenInfo:
        """For the operator's CLI: a token by id or by its shown prefix, dots and all (``sk-AbC1234...``)."""
        prefix = prefix_or_id.strip().removesuffix("...").removesuffix("\u2026")
        async with self._db.sessions() as session:
            if prefix.isascii() and prefix.isdigit() and ranges.ID.contains(int(prefix)):
                row = await tokens.by_id(session, token_id=int(prefix))
                if row is not None:
                    return TokenInfo.of(row)
            rows = await tokens.by_prefix(session, prefix=prefix) if prefix else []
        if len(rows) != 1:
            raise NotFound(f"{'No' if not rows else 'More than one'} token matches {prefix_or_id!r}.")
        return TokenInfo.of(rows[0])
