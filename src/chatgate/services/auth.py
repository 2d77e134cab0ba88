"""Who is calling: the operator's master key, or a user's API token (missing, unknown, revoked or expired: 401)."""

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime

from chatgate.errors import AuthError, ModelNotFound, StorageUnavailable, TokenMismatch
from chatgate.storage.database import Database
from chatgate.storage.fastpath import TokenRow


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class UserLimits:
    """A user's limits across all of their tokens and the console; None: no limit."""

    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute
    concurrency: int | None = None  # requests at once

    def with_own(self, rpm: int | None, tpm: int | None, concurrency: int | None) -> "UserLimits":
        """These (the server's defaults), with the user's own settings where there are any."""
        if rpm is None and tpm is None and concurrency is None:
            return self
        return UserLimits(
            rpm if rpm is not None else self.rpm,
            tpm if tpm is not None else self.tpm,
            concurrency if concurrency is not None else self.concurrency,
        )


NO_LIMITS = UserLimits()


@dataclass(frozen=True)
class Principal:
    """The caller of one request."""

    user_id: int | None  # None: the operator's master key
    token_id: int | None  # None: the master key, or a user signed in to the console
    allowed_models: tuple[str, ...] | None = None
    rpm_limit: int | None = None  # the token's own per-minute limits, if it has any
    tpm_limit: int | None = None
    credits_left: int | None = None  # as the token was looked up; None: not metered (the master key)
    group: str = "default"
    price_multiplier: int = 1000  # thousandths of the catalogue's prices, from the user's group
    group_models: tuple[str, ...] | None = None  # the models the user's group sees; None: all
    user: UserLimits = NO_LIMITS

    @property
    def limited(self) -> bool:
        user = self.user
        return not (
            self.rpm_limit is None
            and self.tpm_limit is None
            and user.rpm is None
            and user.tpm is None
            and user.concurrency is None
        )

    def check_model(self, requested: str, canonical: str) -> None:
        if self.group_models is not None and canonical not in self.group_models:
            # Outside the group's models: as if it did not exist, as in the model list.
            raise ModelNotFound(
                f"The model '{requested}' does not exist or you do not have access to it.", param="model"
            )
        if self.allowed_models is not None and not {requested, canonical} & set(self.allowed_models):
            raise TokenMismatch(f"This API token may not use the model '{requested}'.", param="model")


MASTER = Principal(user_id=None, token_id=None)


class AuthService:
    def __init__(self, db: Database, master_key: str, *, limits: UserLimits) -> None:
        self._db = db
        self._master = master_key.encode()
        self._limits = limits  # the server's defaults for every user

    def is_master(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries the master key."""
        scheme, _, secret = (authorization or "").partition(" ")
        secret = secret.strip()
        return (
            scheme.lower() == "bearer" and bool(secret) and hmac.compare_digest(secret.encode(), self._master)
        )

    async def authenticate(self, authorization: str | None) -> Principal:
        """Check an ``Authorization`` header; raise AuthError unless it carries a live token."""
        if not authorization:
            raise AuthError(
                "You didn't provide an API key. Send it in the Authorization header as 'Bearer YOUR_KEY'."
            )
        scheme, _, secret = authorization.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise AuthError("The Authorization header must be 'Bearer YOUR_KEY'.")
        if hmac.compare_digest(secret.encode(), self._master):
            return MASTER
        digest = hash_secret(secret)
        row = await self._lookup(digest)
        if row is None:
            raise AuthError("Incorrect API key provided.")
        if row.revoked:
            raise AuthError("This API key has been revoked.")
        if row.expires_at is not None and row.expires_at <= datetime.now(UTC):
            raise AuthError("This API key has expired.")
        if row.user_disabled:
            raise AuthError("This account is disabled.")
        return Principal(
            user_id=row.user_id,
            token_id=row.token_id,
            allowed_models=tuple(row.allowed_models) if row.allowed_models is not None else None,
            rpm_limit=row.rpm_limit,
            tpm_limit=row.tpm_limit,
            credits_left=row.credits_left,
            group=row.group,
            price_multiplier=row.price_multiplier,
            group_models=tuple(row.group_models) if row.group_models is not None else None,
            user=self._limits.with_own(row.user_rpm, row.user_tpm, row.user_concurrency),
        )

    async def _lookup(self, digest: str) -> TokenRow | None:
        try:
            return await self._db.fast.token(digest)
        except Exception as exc:  # the database is unreachable: refuse, clearly, rather than a 500
            raise StorageUnavailable("The server cannot reach its database right now.") from exc
