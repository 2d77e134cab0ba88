"""Users: sign-up (open, by invite, or closed) with a free quota, password sign-in with growing
delays, browser sessions, and what admins do to users (grants, limits, disabling)."""

import hashlib
import math
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from chatgate import ranges
from chatgate.errors import AuthError, Conflict, Forbidden, InvalidRequest, NotFound, RateLimited
from chatgate.services.audit import OPERATOR, Actor, record
from chatgate.services.auth import NO_LIMITS, Principal, UserLimits, hash_secret
from chatgate.services.passwords import PasswordHashing
from chatgate.services.ratelimit import HOUR, RateLimiter
from chatgate.storage import email_tokens, invites, sessions, tokens, users
from chatgate.storage.database import Database
from chatgate.storage.tables import User
from chatgate.storage.users import MAX_CREDITS as MAX_CREDITS

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
SignupMode = Literal["open", "invite", "closed"]


@dataclass(frozen=True)
class Account:
    id: int
    email: str
    is_admin: bool
    disabled: bool
    credits: int
    created_at: datetime
    rpm_limit: int | None  # the user's own limits; None: the server's defaults
    tpm_limit: int | None
    concurrency_limit: int | None
    email_verified: bool = True
    group: str = "default"  # its price group

    @classmethod
    def of(cls, user: User) -> "Account":
        return cls(
            user.id, user.email, user.is_admin, user.disabled, user.credits, user.created_at,
            user.rpm_limit, user.tpm_limit, user.concurrency_limit,
            user.email_verified_at is not None, user.group_name or "default",
        )  # fmt: skip


@dataclass(frozen=True)
class SignedIn:
    account: Account
    csrf_token: str
    principal: Principal  # the user, for the limits every console call counts against
    session_hash: str  # the hash of the session's cookie


@dataclass(frozen=True)
class AccountRules:
    """How accounts are opened and signed in to (from the settings)."""

    signup: SignupMode = "open"
    signups_per_hour: int = 5  # per client address; 0: no limit
    free_credits: int = 1_000_000
    session_hours: int = 24 * 7
    login_free_attempts: int = 5  # per account, before delays begin
    login_address_free_attempts: int = 20  # per client address
    login_max_delay: float = 300.0
    limits: UserLimits = NO_LIMITS  # every user's, unless the user has their own
    tokens_per_user: int = 20  # live API tokens a user may hold
    # New accounts confirm their email before signing in, and get their free credits then.
    require_verification: bool = False


def _email(raw: str) -> str:
    email = raw.strip().lower()
    if not _EMAIL.match(email) or len(email) > 320:
        raise InvalidRequest("That is not a valid email address.", param="email")
    return email


normal_email = _email  # an address as accounts are kept under it, or InvalidRequest


def _check_password(password: str, param: str = "password") -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidRequest(f"Passwords have {MIN_PASSWORD} to {MAX_PASSWORD} characters.", param=param)


def _account_key(email: str) -> str:
    """A sign-in throttle's key for an email: hashed, so no address is stored in Redis."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


def _too_many(what: str, wait: float) -> RateLimited:
    seconds = max(1, math.ceil(wait))
    return RateLimited(f"Too many {what}; try again in {seconds}s.", retry_after=seconds, headers={})


class AccountService:
    def __init__(
        self,
        db: Database,
        *,
        rules: AccountRules,
        limiter: RateLimiter,
        hashing: PasswordHashing,
    ) -> None:
        self._db = db
        self.rules = rules
        self._limiter = limiter
        self._hashing = hashing

    def principal(self, user: User | Account) -> Principal:
        """A user acting through the console: the user's limits, no token's."""
        own = self.rules.limits.with_own(user.rpm_limit, user.tpm_limit, user.concurrency_limit)
        return Principal(user_id=user.id, token_id=None, user=own)

    # Sign-up

    async def sign_up(
        self, email: str, password: str, *, address: str, invite: str | None = None
    ) -> tuple[str, SignedIn] | Account:
        """A new account with the free credits, signed in: its session cookie. When addresses must
        be confirmed (``rules.require_verification``), the account alone: no session, and no
        credits until its link is followed.

        Cheap refusals first (the mode, the input, the address's sign-ups this hour, the invite
        code), the password hash last.
        """
        mode = self.rules.signup
        if mode == "closed":
            raise Forbidden(
                "Sign-up is closed on this server; ask its operator for an account.", code="signup_closed"
            )
        if mode == "invite" and not (invite and invite.strip()):
            raise Forbidden(
                "Sign-up on this server needs an invite code.", code="invite_required", param="invite"
            )
        email = _email(email)
        _check_password(password)
        if self.rules.signups_per_hour:
            wait = await self._limiter.hit(f"signup:{address}", self.rules.signups_per_hour, HOUR)
            if wait is not None:
                raise _too_many("sign-ups from this address", wait)
        code_hash = hash_secret(invite.strip()) if mode == "invite" and invite else None
        if code_hash is not None:
            async with self._db.sessions() as session:
                if not await invites.usable(session, code_hash=code_hash):
                    raise _bad_invite()
        password_hash = await self._hashing.hash(password)
        try:
            async with self._db.transaction() as session:
                if await users.by_email(session, email=email) is not None:
                    raise Conflict("An account with this email already exists.", param="email")
                verified = not self.rules.require_verification
                invite_id = None
                if code_hash is not None:
                    invite_id = await invites.consume(session, code_hash=code_hash)
                    if invite_id is None:
                        raise _bad_invite()
                user = await users.insert(
                    session,
                    email=email,
                    password_hash=password_hash,
                    credits=self.rules.free_credits if verified else 0,  # else on verification
                    invite_id=invite_id,
                    verified=verified,
                )
                if not verified:
                    return Account.of(user)
                return await self._open_session(session, user)
        except IntegrityError as exc:  # two sign-ups racing for one email
            raise Conflict("An account with this email already exists.", param="email") from exc

    async def ensure(self, email: str) -> Account:
        """The account for an email, created (without a password, with the free quota) if needed."""
        email = _email(email)
        async with self._db.transaction() as session:
            user = await users.by_email(session, email=email)
            if user is None:
                user = await users.insert(
                    session, email=email, password_hash=None, credits=self.rules.free_credits
                )
            return Account.of(user)

    async def create_admin(self, email: str, password: str) -> Account:
        email = _email(email)
        _check_password(password)
        password_hash = await self._hashing.hash(password)
        async with self._db.transaction() as session:
            user = await users.by_email(session, email=email)
            if user is None:
                user = await users.insert(
                    session, email=email, password_hash=None, credits=self.rules.free_credits, is_admin=True
                )
            user.is_admin = True
            user.password_hash = password_hash
            return Account.of(user)

    # Admins

    async def get(self, user_id: int) -> Account:
        async with self._db.sessions() as session:
            user = await users.by_id(session, user_id=user_id)
        if user is None:
            raise NotFound("No such user.")
        return Account.of(user)

    async def by_email(self, email: str) -> Account:
        async with self._db.sessions() as session:
            user = await users.by_email(session, email=_email(email))
        if user is None:
            raise NotFound(f"No user with email {email}.", param="email")
        return Account.of(user)

    async def list(self, *, limit: int = 100, offset: int = 0) -> list[Account]:
        ranges.PAGE_OFFSET.check(offset, "offset")
        async with self._db.sessions() as session:
            return [Account.of(u) for u in await users.list_all(session, limit=limit, offset=offset)]

    async def grant(self, user_id: int, credits: int, actor: Actor = OPERATOR) -> Account:
        ranges.GRANT.check(credits, "credits")
        async with self._db.transaction() as session:
            if await users.by_id(session, user_id=user_id) is None:
                raise NotFound("No such user.")
            trace_id = f"grant_{uuid.uuid4().hex}"
            # Conditional, so a removal racing a reservation can't leave a negative balance.
            if not await users.grant(session, user_id=user_id, credits=credits, trace_id=trace_id):
                raise InvalidRequest(
                    f"That would leave a negative balance, or one over {MAX_CREDITS:,} credits.",
                    param="credits",
                )
            await record(
                session, actor, "user.grant", f"user {user_id}", {"credits": credits, "ledger": trace_id}
            )
        return await self.get(user_id)

    async def set_limits(
        self, user_id: int, limits: dict[str, int | None], actor: Actor = OPERATOR
    ) -> Account:
        """Set some of the user's own ``rpm_limit``, ``tpm_limit``, ``concurrency_limit`` (None:
        back to the server's default)."""
        checks = {"rpm_limit": ranges.RPM, "tpm_limit": ranges.TPM, "concurrency_limit": ranges.CONCURRENCY}
        for name, value in limits.items():
            if name not in checks:
                raise InvalidRequest(f"Unknown limit {name!r}.", param=name)
            checks[name].check_optional(value, name)
        async with self._db.transaction() as session:
            if await users.by_id(session, user_id=user_id) is None:
                raise NotFound("No such user.")
            await users.set_limits(session, user_id=user_id, limits=limits)
            await record(session, actor, "user.limits", f"user {user_id}", dict(limits))
        return await self.get(user_id)

    async def set_disabled(self, user_id: int, disabled: bool, actor: Actor = OPERATOR) -> Account:
        async with self._db.transaction() as session:
            user = await users.by_id(session, user_id=user_id)
            if user is None:
                raise NotFound("No such user.")
            user.disabled = disabled
            if disabled:
                await sessions.remove(session, user_id=user_id)
            await record(session, actor, "user.disable" if disabled else "user.enable", f"user {user_id}")
            return Account.of(user)

    @property
    def free_credits(self) -> int:
        return self.rules.free_credits

    @property
    def require_verification(self) -> bool:
        return self.rules.require_verification

    async def hash_password(self, password: str) -> str:
        _check_password(password)
        return await self._hashing.hash(password)

    async def delete(self, user_id: int, password: str) -> None:
        """Delete one's own account: tokens revoked, sessions and links ended, email and password
        removed. The ledger and usage rows stay (the books must add up), under an anonymous row."""
        async with self._db.sessions() as session:
            user = await users.by_id(session, user_id=user_id)
        if user is None or user.deleted_at is not None:
            raise NotFound("No such user.")
        if not await self._hashing.verify(user.password_hash, password):  # outside any transaction
            raise Forbidden("The password is not right.", param="password")
        async with self._db.transaction() as session:
            user = await users.by_id(session, user_id=user_id)
            if user is None or user.deleted_at is not None:
                raise NotFound("No such user.")
            await tokens.revoke_all(session, user_id=user_id)
            await sessions.remove(session, user_id=user_id)
            await email_tokens.remove(session, user_id=user_id)
            await users.anonymise(session, user_id=user_id)

    async def change_password(self, signed_in: SignedIn, current: str, new: str) -> None:
        """A new password; every other session of the user ends (this one stays signed in)."""
        _check_password(new, "new_password")
        user_id = signed_in.account.id
        async with self._db.sessions() as session:
            user = await users.by_id(session, user_id=user_id)
        if user is None or not await self._hashing.verify(user.password_hash, current):
            raise Forbidden("The current password is not right.", param="current_password")
        password_hash = await self._hashing.hash(new)
        async with self._db.transaction() as session:
            user = await users.by_id(session, user_id=user_id)
            if user is None:
                raise NotFound("No such user.")
            user.password_hash = password_hash
            await sessions.remove(session, user_id=user_id, keep=signed_in.session_hash)

    # Sign-in and browser sessions: the cookie value is a random secret; only its hash is stored.

    async def log_in(self, email: str, password: str, *, address: str) -> tuple[str, SignedIn]:
        """A session for the right password. Before any hashing, the attempt counts against the
        client address and the account: past their free attempts, each must wait twice as long
        (from the end of the last failed one) as the one before."""
        email = email.strip().lower()
        rules = self.rules
        by_address = await self._limiter.attempt(
            f"login:addr:{address}", free=rules.login_address_free_attempts, max_delay=rules.login_max_delay
        )
        if by_address is not None:
            raise _too_many("sign-in attempts from this address", by_address)
        account_key = f"login:acct:{_account_key(email)}"
        by_account = await self._limiter.attempt(
            account_key, free=rules.login_free_attempts, max_delay=rules.login_max_delay
        )
        if by_account is not None:
            raise _too_many("sign-in attempts for this account", by_account)
        async with self._db.sessions() as session:
            user = await users.by_email(session, email=email)
        verified = await self._hashing.verify(user.password_hash if user is not None else None, password)
        if not verified or user is None or user.disabled:
            for key in (f"login:addr:{address}", account_key):
                await self._limiter.failed(key)  # the delays run from now, after the check
            raise AuthError("Wrong email or password.")
        await self._limiter.forgive(account_key)
        # A success is no guess: it does not count against the address (many may sign in from one).
        await self._limiter.forgive(f"login:addr:{address}", attempts=1)
        if self.rules.require_verification and user.email_verified_at is None:
            raise Forbidden(
                "Confirm your email address first: follow the link we sent you.",
                code="email_not_verified",
                param="email",
            )
        async with self._db.transaction() as session:
            return await self._open_session(session, user)

    async def _open_session(self, session: AsyncSession, user: User) -> tuple[str, SignedIn]:
        cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        created = datetime.now(UTC)
        id_hash = hash_secret(cookie)
        await sessions.insert(
            session,
            id_hash=id_hash,
            user_id=user.id,
            csrf_token=csrf,
            created_at=created,
            expires_at=created + timedelta(hours=self.rules.session_hours),
        )
        return cookie, SignedIn(Account.of(user), csrf, self.principal(user), id_hash)

    async def session(self, cookie: str | None) -> SignedIn:
        if not cookie or len(cookie) > 256:
            raise AuthError("Not signed in.", code="not_signed_in")
        id_hash = hash_secret(cookie)
        async with self._db.sessions() as session:
            row = await sessions.with_user(session, id_hash=id_hash)
        if row is None:
            raise AuthError("Not signed in.", code="not_signed_in")
        web, user = row
        if web.expires_at <= datetime.now(UTC) or user.disabled:
            raise AuthError("The session has ended; sign in again.", code="not_signed_in")
        return SignedIn(Account.of(user), web.csrf_token, self.principal(user), id_hash)

    async def log_out(self, cookie: str) -> None:
        async with self._db.transaction() as session:
            await sessions.remove(session, id_hash=hash_secret(cookie))


def _bad_invite() -> Forbidden:
    return Forbidden(
        "That invite code is not valid: unknown, used up, expired or withdrawn.",
        code="invalid_invite",
        param="invite",
    )
