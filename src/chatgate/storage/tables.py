"""The database schema. It changes only through an Alembic revision in ``migrations/versions``."""

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import DateTime, TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every database: SQLite hands back naive ones, stored in UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


# 64-bit integers; on SQLite plain INTEGER, which is 64-bit there and the only type it autoincrements.
BigInt = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), int: BigInt}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(256))
    is_admin: Mapped[bool] = mapped_column(default=False)
    disabled: Mapped[bool] = mapped_column(default=False)
    credits: Mapped[int] = mapped_column(default=0)  # the balance, in integer credits
    created_at: Mapped[datetime]
    email_verified_at: Mapped[datetime | None]  # None: not verified (checked only when verification is on)
    deleted_at: Mapped[datetime | None]  # the account was deleted: its personal data is gone, its rows stay
    group_name: Mapped[str] = mapped_column(
        String(64), ForeignKey("user_groups.name"), default="default", server_default="default"
    )
    # The user's own limits across all their tokens; None: the server's defaults.
    rpm_limit: Mapped[int | None] = mapped_column(Integer)
    tpm_limit: Mapped[int | None] = mapped_column(Integer)
    concurrency_limit: Mapped[int | None] = mapped_column(Integer)
    invite_id: Mapped[int | None] = mapped_column(ForeignKey("invites.id"))  # the code it signed up with


class Invite(Base):
    """An invite code for ``CHATGATE_SIGNUP=invite``: only its hash is kept, like an API token's."""

    __tablename__ = "invites"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # shown in lists
    note: Mapped[str] = mapped_column(String(200), default="")
    max_uses: Mapped[int] = mapped_column(default=1)
    uses: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))  # shown in lists: "sk-ab12cd"
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the whole token
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON)
    quota_cap: Mapped[int | None]  # at most this many credits through this token; None: the user's balance
    spent: Mapped[int] = mapped_column(default=0)  # credits reserved or settled through this token
    rpm_limit: Mapped[int | None] = mapped_column(Integer)
    tpm_limit: Mapped[int | None] = mapped_column(Integer)


class LedgerEntry(Base):
    """Append-only: every movement of credits, keyed by trace id so a retry can't charge twice."""

    __tablename__ = "ledger"
    __table_args__ = (UniqueConstraint("user_id", "trace_id", "kind", name="uq_ledger_user_trace_kind"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    trace_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))  # grant | reserve | settle
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))  # looked up through the unique key
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id"))
    amount: Mapped[int]  # signed: negative spends, positive grants and refunds
    created_at: Mapped[datetime]


class OpenReservation(Base):
    """Credits a request holds while it runs: inserted with its reserve row, deleted in the
    transaction that settles it. ``owner`` is the serving process; see Lease."""

    __tablename__ = "reservations"
    __table_args__ = (UniqueConstraint("user_id", "trace_id", name="uq_reservations_user_trace"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id"))
    trace_id: Mapped[str] = mapped_column(String(128))
    amount: Mapped[int]
    model: Mapped[str | None] = mapped_column(String(200))  # None: opened before revision 0003
    owner: Mapped[str] = mapped_column(String(64))  # no index: a sweep reads every open reservation
    created_at: Mapped[datetime]


class Lease(Base):
    """A serving process that may hold reservations, alive while it keeps ``expires_at`` ahead."""

    __tablename__ = "leases"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))  # see services/recovery.py: host_identity
    pid: Mapped[int] = mapped_column(Integer)
    process_start: Mapped[int]  # the process's start time (clock ticks since boot), against pid reuse
    expires_at: Mapped[datetime]


class UsageRecord(Base):
    """One row per request: written with its settlement, or (a refusal) in a batch."""

    __tablename__ = "usage_log"
    __table_args__ = (
        Index("ix_usage_token_day", "token_id", "day"),
        Index("ix_usage_user_day", "user_id", "day"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    # Not unique: a caller may resend an x-request-id (the ledger refuses to charge it twice).
    trace_id: Mapped[str] = mapped_column(String(128), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id"))
    model: Mapped[str] = mapped_column(String(200))
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)
    cost: Mapped[int] = mapped_column(default=0)
    latency_ms: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(String(16))  # ok | cancelled | error
    # Which API the request came through: chat.completions, responses, messages, images.generations...
    api: Mapped[str] = mapped_column(
        String(32), default="chat.completions", server_default="chat.completions"
    )
    error_code: Mapped[str | None] = mapped_column(String(64))
    # The price the request was charged at: the catalogue's credits per million tokens, and the
    # caller's group multiplier in thousandths (None before prices were recorded, and for refusals).
    price_prompt: Mapped[int | None]
    price_completion: Mapped[int | None]
    price_multiplier: Mapped[int | None] = mapped_column(Integer)
    day: Mapped[str] = mapped_column(String(10))  # UTC date, for per-day totals on any database
    created_at: Mapped[datetime]


class StoredResponse(Base):
    """A Responses API answer kept for ``GET /v1/responses/{id}`` and ``previous_response_id``,
    visible only to the user who made it, until ``expires_at``."""

    __tablename__ = "responses"
    __table_args__ = (Index("ix_responses_expires", "expires_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)  # None: the master key
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id"))
    model: Mapped[str] = mapped_column(String(200))
    # This request's input items; the whole conversation before its answer (earlier turns
    # included), to continue from; and the Response object as answered.
    input_items: Mapped[list[Any]] = mapped_column(JSON)
    context: Mapped[list[Any]] = mapped_column(JSON)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class WebSession(Base):
    """A signed-in browser (the console): only the hash of its cookie is kept."""

    __tablename__ = "web_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class DeploymentState(Base):
    """A deployment taken out of service, by an admin or automatically; shared by every replica."""

    __tablename__ = "deployment_states"

    deployment_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    disabled: Mapped[bool] = mapped_column(default=False)
    automatic: Mapped[bool] = mapped_column(default=False)  # disabled by the failure policy, not by hand
    reason: Mapped[str | None] = mapped_column(String(500))
    changed_by: Mapped[int | None]  # the admin's user id; None: the operator's CLI or chatgate itself
    changed_at: Mapped[datetime]


class DeploymentMinute(Base):
    """One replica's traffic to one deployment in one minute, and its live figures when last written.

    Only the replica that owns a row writes it, so its counts are written whole, never incremented.
    """

    __tablename__ = "deployment_stats"
    __table_args__ = (
        UniqueConstraint("deployment_id", "replica", "minute", name="uq_deployment_stats_minute"),
        Index("ix_deployment_stats_minute", "minute"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    deployment_id: Mapped[str] = mapped_column(String(200))
    replica: Mapped[str] = mapped_column(String(64))
    minute: Mapped[int]  # minutes since the epoch, UTC
    requests: Mapped[int] = mapped_column(default=0)
    errors: Mapped[int] = mapped_column(default=0)
    latency: Mapped[dict[str, int]] = mapped_column(JSON)  # histogram: bucket index -> count
    in_flight: Mapped[int] = mapped_column(Integer, default=0)
    cooling_until: Mapped[float] = mapped_column(Float, default=0.0)  # epoch seconds
    last_error: Mapped[str | None] = mapped_column(String(500))
    last_error_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class AuditEntry(Base):
    """An admin action (or chatgate's own, such as disabling a failing deployment): who, what, when."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_created", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    created_at: Mapped[datetime]
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))  # None: the CLI or chatgate
    actor: Mapped[str] = mapped_column(String(16))  # admin | operator | chatgate
    action: Mapped[str] = mapped_column(String(64))  # e.g. user.grant, deployment.disable
    target: Mapped[str] = mapped_column(String(200))  # what it was done to: "user 7", a deployment id
    detail: Mapped[dict[str, object]] = mapped_column(JSON)


class EmailToken(Base):
    """A link sent by email (verify the address, reset the password): only its hash is kept."""

    __tablename__ = "email_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    purpose: Mapped[str] = mapped_column(String(16))  # verify | reset
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class UserGroup(Base):
    """A price group: what its members pay (a multiplier on the catalogue's prices) and what they see."""

    __tablename__ = "user_groups"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    multiplier: Mapped[int] = mapped_column(Integer, default=1000)  # thousandths: 1000 is the list price
    models: Mapped[list[str] | None] = mapped_column(JSON)  # the models its members may use; None: all
    description: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]


class RedemptionCode(Base):
    """A top-up code: credits for whoever redeems it first. Only its hash is kept, like a token's."""

    __tablename__ = "redemption_codes"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(16))  # its first characters, to tell codes apart in lists
    credits: Mapped[int]
    note: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))  # None: the operator's CLI
    expires_at: Mapped[datetime | None]
    disabled_at: Mapped[datetime | None]
    redeemed_at: Mapped[datetime | None]
    redeemed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
