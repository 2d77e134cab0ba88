"""The console's accounts: users, their sessions and their API tokens, as ``/api`` sends them."""

from datetime import datetime
from typing import Literal

from pydantic import Field

from chatgate.protocol.base import WireModel


class Account(WireModel):
    nullable = frozenset({"rpm_limit", "tpm_limit", "concurrency_limit"})

    id: int
    email: str
    is_admin: bool
    disabled: bool
    credits: int = Field(description="The balance, in credits.")
    created_at: datetime
    rpm_limit: int | None = Field(description="The user's own requests per minute; null: the server's.")
    tpm_limit: int | None = Field(description="The user's own tokens per minute; null: the server's.")
    concurrency_limit: int | None = Field(description="The user's own requests at once; null: the server's.")
    email_verified: bool = Field(
        description="Whether the email address was confirmed (always, unless required)."
    )
    group: str = Field(description="Its price group.")


class Limits(WireModel):
    """The limits a user's requests count against, across all of the user's tokens and the console."""

    nullable = frozenset({"rpm", "tpm", "concurrency"})

    rpm: int | None = Field(description="Requests per minute; null: no limit.")
    tpm: int | None = Field(description="Tokens per minute; null: no limit.")
    concurrency: int | None = Field(description="Requests at once; null: no limit.")
    tokens: int = Field(description="Live API tokens the user may hold.")


class Session(WireModel):
    """A signed-in user. Send ``csrf_token`` back in ``x-csrf-token`` with every state-changing call."""

    user: Account
    csrf_token: str
    limits: Limits


class SignUpMode(WireModel):
    mode: Literal["open", "invite", "closed"] = Field(
        description="`open`: anyone may sign up; `invite`: a sign-up needs an invite code; `closed`: none."
    )


class PendingVerification(WireModel):
    """A new account that confirms its email address before it signs in: a link was sent to it."""

    user: Account
    verification_required: bool


class AccountList(WireModel):
    data: list[Account]


class Token(WireModel):
    """An API token as listed: never its secret, which is shown once, when it is made."""

    nullable = frozenset(
        {
            "last_used_at",
            "expires_at",
            "revoked_at",
            "allowed_models",
            "quota_cap",
            "rpm_limit",
            "tpm_limit",
        }
    )

    id: int
    user_id: int
    name: str
    prefix: str = Field(description="The secret's first characters, to tell tokens apart.")
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    allowed_models: list[str] | None = Field(description="The models it may use; null: any.")
    quota_cap: int | None = Field(description="The most credits it may spend; null: the balance.")
    spent: int = Field(description="Credits it has spent.")
    rpm_limit: int | None
    tpm_limit: int | None


class IssuedToken(Token):
    key: str = Field(description="The secret (`sk-...`), shown this once.")


class TokenList(WireModel):
    data: list[Token]


class Invite(WireModel):
    """An invite code as listed: never the code itself, which is shown once, when it is made."""

    nullable = frozenset({"expires_at", "revoked_at"})

    id: int
    prefix: str = Field(description="The code's first characters, to tell codes apart.")
    note: str
    max_uses: int = Field(description="The sign-ups it admits.")
    uses: int
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class IssuedInvite(Invite):
    code: str = Field(description="The code (`inv-...`), shown this once.")


class InviteList(WireModel):
    data: list[Invite]
