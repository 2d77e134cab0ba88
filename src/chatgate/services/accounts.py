"""Users: sign-up with a free quota, password login, browser sessions, admins, grants."""

import asyncio
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.exc import IntegrityError

from chatgate.errors import AuthError, Conflict, Forbidden, InvalidRequest, NotFound
from chatgate.services.audit import OPERATOR, Actor, record
from chatgate.services.auth import hash_secret
from chatgate.storage import email_tokens, sessions, tokens, users
from chatgate.storage.database import Database
from chatgate.storage.tables import User
from chatgate.storage.users import MAX_CREDITS as MAX_CREDITS

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD = 8


@dataclass(frozen=True)
class Account:
    id: int
    email: str
    is_admin: bool
    disabled: bool
    credits: int
    created_at: datetime
    email_verified: bool = True
    group: str = "default"  # its price group

    @classmethod
    def of(cls, user: User) -> "Account":
        return cls(
            user.id,
            user.email,
            user.is_admin,
            user.disabled,
            user.credits,
            user.created_at,
            user.email_verified_at is not None,
            user.group_name or "default",
        )


@dataclass(frozen=True)
class SignedIn:
    account: Account
    csrf_token: str


def _email(raw: str) -> str:
    email = raw.strip().lower()
    if not _EMAIL.match(email) or len(email) > 320:
        raise InvalidRequest("That is not a valid email address.", param="email")
    return email


normal_email = _email  # an address as accounts are kept under it, or InvalidRequest


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidRequest(f"Passwords need at least {MIN_PASSWORD} characters.", param="password")


class AccountService:
    def __init__(
        self, db: Database, *, free_credits: int, session_hours: int, require_verification: bool = False
    ) -> None:
        self._db = db
        self._free_credits = free_credits
        self._session_hours = session_hours
        # New accounts verify their email before signing in, and get their free credits then.
        self.require_verification = require_verification
        self._hasher = PasswordHasher()  # argon2id: memory-hard
        self._dummy: str | None = None

    async def sign_up(self, email: str, password: str, *, is_admin: bool = False) -> Account:
        email = _email(email)
        _check_password(password)
        password_hash = await asyncio.to_thread(self._hasher.hash, password)  # memory-hard: off the loop
        try:
            async with self._db.transaction() as session:
                if await users.by_email(session, email=email) is not None:
                    raise Conflict("An account with this email already exists.", param="email")
                verified = is_admin or not self.require_verification
                user = await users.insert(
                    session,
                    email=email,
                    password_hash=password_hash,
                    credits=self._free_credits if verified else 0,  # else on verification
                    is_admin=is_admin,
                    verified=verified,
                )
                return Account.of(user)
        except IntegrityError as exc:  # two sign-ups racing for one email
            raise Conflict("An account with this email already exists.", param="email") from exc

    async def ensure(self, email: str) -> Account:
        """The account for an email, created (without a password, with the free quota) if needed."""
        email = _email(email)
        async with self._db.transaction() as session:
            user = await users.by_email(session, email=email)
            if user is None:
                user = await users.insert(
                    session, email=email, password_hash=None, credits=self._free_credits
                )
            return Account.of(user)

    async def create_admin(self, email: str, password: str) -> Account:
        email = _email(email)
        _check_password(password)
        async with self._db.transaction() as session:
            user = await users.by_email(session, email=email)
            if user is None:
                user = await users.insert(
                    session, email=email, password_hash=None, credits=self._free_credits, is_admin=True
                )
            user.is_admin = True
            user.password_hash = await asyncio.to_thread(self._hasher.hash, password)
            return Account.of(user)

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
        async with self._db.sessions() as session:
            return [Account.of(u) for u in await users.list_all(session, limit=limit, offset=offset)]

    async def grant(self, user_id: int, credits: int, actor: Actor = OPERATOR) -> Account:
        if not -MAX_CREDITS <= credits <= MAX_CREDITS:
            raise InvalidRequest(f"A grant moves at most {MAX_CREDITS:,} credits.", param="credits")
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
        return self._free_credits

    async def hash_password(self, password: str) -> str:
        _check_password(password)
        return await asyncio.to_thread(self._hasher.hash, password)  # memory-hard: off the loop

    async def delete(self, user_id: int, password: str) -> None:
        """Delete one's own account: tokens revoked, sessions and links ended, email and password
        removed. The ledger and usage rows stay (the books must add up), under an anonymous row."""
        async with self._db.transaction() as session:
            user = await users.by_id(session, user_id=user_id)
            if user is None or user.deleted_at is not None:
                raise NotFound("No such user.")
            if not await self._verify(user, password):
                raise Forbidden("The password is not right.", param="password")
            await tokens.revoke_all(session, user_id=user_id)
            await sessions.remove(session, user_id=user_id)
            await email_tokens.remove(session, user_id=user_id)
            await users.anonymise(session, user_id=user_id)

    async def change_password(self, user_id: int, current: str, new: str) -> None:
        _check_password(new)
        async with self._db.transaction() as session:
            user = await users.by_id(session, user_id=user_id)
            if user is None or not await self._verify(user, current):
                raise Forbidden("The current password is not right.", param="current_password")
            user.password_hash = await asyncio.to_thread(self._hasher.hash, new)

    async def _verify(self, user: User | None, password: str) -> bool:
        """Check a password off the event loop; an unknown user costs the same time as a wrong password."""
        stored = user.password_hash if user is not None and user.password_hash else self._dummy_hash()
        try:
            matched = await asyncio.to_thread(self._hasher.verify, stored, password)
        except (VerificationError, InvalidHashError):
            return False
        return bool(matched) and user is not None and bool(user.password_hash)

    def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = self._hasher.hash(secrets.token_urlsafe(16))
        return self._dummy

    # Browser sessions: the cookie value is a random secret; only its hash is stored.

    async def log_in(self, email: str, password: str) -> tuple[str, SignedIn]:
        async with self._db.transaction() as session:
            user = await users.by_email(session, email=email.strip().lower())
            if not await self._verify(user, password) or user is None or user.disabled:
                raise AuthError("Wrong email or password.")
            if self.require_verification and user.email_verified_at is None:
                raise Forbidden(
                    "Confirm your email address first: follow the link we sent you.",
                    code="email_not_verified",
                    param="email",
                )
            cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
            now = datetime.now(UTC)
            await sessions.insert(
                session,
                id_hash=hash_secret(cookie),
                user_id=user.id,
                csrf_token=csrf,
                created_at=now,
                expires_at=now + timedelta(hours=self._session_hours),
            )
            return cookie, SignedIn(Account.of(user), csrf)

    async def session(self, cookie: str | None) -> SignedIn:
        if not cookie:
            raise AuthError("Not signed in.", code="not_signed_in")
        async with self._db.sessions() as session:
            row = await sessions.with_user(session, id_hash=hash_secret(cookie))
        if row is None:
            raise AuthError("Not signed in.", code="not_signed_in")
        web, user = row
        if web.expires_at <= datetime.now(UTC) or user.disabled:
            raise AuthError("The session has ended; sign in again.", code="not_signed_in")
        return SignedIn(Account.of(user), web.csrf_token)

    async def log_out(self, cookie: str) -> None:
        async with self._db.transaction() as session:
            await sessions.remove(session, id_hash=hash_secret(cookie))
