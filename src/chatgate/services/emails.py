"""Links by email: confirming an address at sign-up, and resetting a forgotten password.

A link carries a random secret (256 bits); only its SHA-256 is stored, it works once, and it
expires (verification after 48 hours, a reset after an hour). Asking for a reset never says whether
an account exists. At most ``PER_HOUR`` links of each kind go to one account in an hour.
"""

import logging
import secrets
from datetime import UTC, datetime, timedelta

from chatgate.errors import InvalidRequest, NotImplementedFeature, RateLimited
from chatgate.providers.mail import Mailer
from chatgate.services.accounts import Account, AccountService, normal_email
from chatgate.services.auth import hash_secret
from chatgate.storage import email_tokens, sessions, users
from chatgate.storage.database import Database

log = logging.getLogger("chatgate.accounts")

VERIFY = "verify"
RESET = "reset"
LIFETIME = {VERIFY: timedelta(hours=48), RESET: timedelta(hours=1)}
PER_HOUR = 3


def _invalid_link() -> InvalidRequest:
    return InvalidRequest(
        "This link is not valid: it was used already, has expired, or was mistyped. Ask for a new one.",
        param="token",
        code="invalid_link",
    )


class AccountMail:
    def __init__(
        self, db: Database, mailer: Mailer | None, accounts: AccountService, *, base_url: str
    ) -> None:
        self._db = db
        self._mailer = mailer
        self._accounts = accounts
        self._base_url = base_url.rstrip("/")

    @property
    def configured(self) -> bool:
        return self._mailer is not None

    def _need_mail(self) -> Mailer:
        if self._mailer is None:
            raise NotImplementedFeature("This server sends no email: ask its operator (CHATGATE_SMTP_HOST).")
        return self._mailer

    async def _issue(self, user_id: int, purpose: str, *, strict: bool) -> str | None:
        """A new link's secret, or None (``strict``: a 429) past the hourly allowance."""
        now = datetime.now(UTC)
        secret = secrets.token_urlsafe(32)
        async with self._db.transaction() as session:
            sent = await email_tokens.sent_since(
                session, user_id=user_id, purpose=purpose, since=now - timedelta(hours=1)
            )
            if sent >= PER_HOUR:
                if strict:
                    raise RateLimited(
                        f"At most {PER_HOUR} such emails an hour; look for the ones already sent.",
                        retry_after=3600,
                        headers={},
                    )
                return None
            await email_tokens.insert(
                session,
                token_hash=hash_secret(secret),
                user_id=user_id,
                purpose=purpose,
                expires_at=now + LIFETIME[purpose],
            )
        return secret

    async def send_verification(self, account: Account) -> None:
        mailer = self._need_mail()
        secret = await self._issue(account.id, VERIFY, strict=True)
        link = f"{self._base_url}/#/verify?token={secret}"
        await mailer.send(
            account.email,
            "Confirm your email address for chatgate",
            f"Welcome to chatgate.\n\nConfirm your email address by opening this link (it works once, "
            f"within 48 hours):\n\n{link}\n\nYour free credits are added when you do. If you did not "
            "sign up, ignore this email.\n",
        )

    async def resend_verification(self, email: str) -> None:
        """Another verification link, for an account that has not confirmed its address yet (and
        silence for any other address, so this tells no one which accounts exist)."""
        async with self._db.sessions() as session:
            user = await users.by_email(session, email=normal_email(email))
        if user is None or user.email_verified_at is not None or user.deleted_at is not None:
            self._need_mail()
            return
        await self.send_verification(Account.of(user))

    async def verify(self, token: str) -> Account:
        """Confirm the address a link was sent to; the free credits land now."""
        async with self._db.transaction() as session:
            user_id = await email_tokens.take(session, token_hash=hash_secret(token), purpose=VERIFY)
            user = await users.by_id(session, user_id=user_id) if user_id is not None else None
            if user is None or user.deleted_at is not None:
                raise _invalid_link()
            if user.email_verified_at is None:
                user.email_verified_at = datetime.now(UTC)
                if self._accounts.free_credits:
                    await users.grant(
                        session,
                        user_id=user.id,
                        credits=self._accounts.free_credits,
                        trace_id=f"signup_{user.id}",
                    )
            await session.flush()
            await session.refresh(user)
            return Account.of(user)

    async def forgot(self, email: str) -> None:
        """Send a reset link if the address has an account; the answer is the same either way."""
        mailer = self._need_mail()
        try:
            address = normal_email(email)
        except InvalidRequest:
            return
        async with self._db.sessions() as session:
            user = await users.by_email(session, email=address)
        if user is None or user.disabled or user.deleted_at is not None:
            return
        secret = await self._issue(user.id, RESET, strict=False)
        if secret is None:
            log.info("password reset for user %d not sent: the hourly allowance is used", user.id)
            return
        link = f"{self._base_url}/#/reset?token={secret}"
        await mailer.send(
            user.email,
            "Reset your chatgate password",
            f"Someone (we hope you) asked to reset the password of this chatgate account.\n\nChoose a new "
            f"password by opening this link (it works once, within an hour):\n\n{link}\n\nIf it was not "
            "you, ignore this email: your password stays as it is.\n",
        )

    async def reset(self, token: str, new_password: str) -> None:
        """Set a new password from a reset link: every session ends, every other reset link dies."""
        password_hash = await self._accounts.hash_password(new_password)
        async with self._db.transaction() as session:
            user_id = await email_tokens.take(session, token_hash=hash_secret(token), purpose=RESET)
            user = await users.by_id(session, user_id=user_id) if user_id is not None else None
            if user is None or user.deleted_at is not None or user.disabled:
                raise _invalid_link()
            user.password_hash = password_hash
            await sessions.remove(session, user_id=user.id)
            await email_tokens.remove(session, user_id=user.id, purpose=RESET)
