"""Running it as a business: deployment state and statistics shared by replicas, the admin audit
log, email links (verification, password reset), verified and deleted accounts, price groups (and
the price each request was charged at), and redemption codes.

On PostgreSQL, ``chatgate_settle`` (migration 0003) is replaced by one that writes the usage row's
prices too.

Revision ID: 0008
Revises: 0003
Create Date: 2026-12-01 16:00:00
"""

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0003"
branch_labels = None
depends_on = None

BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "user_groups",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("multiplier", sa.Integer(), nullable=False),
        sa.Column("models", sa.JSON(), nullable=True),
        sa.Column("description", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.execute(
        "INSERT INTO user_groups (name, multiplier, models, description, created_at) "
        "VALUES ('default', 1000, NULL, 'Everyone, at the catalogue''s prices', CURRENT_TIMESTAMP)"
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("email_verified_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("group_name", sa.String(length=64), server_default="default", nullable=False)
        )
        batch_op.create_foreign_key("fk_users_group_name", "user_groups", ["group_name"], ["name"])
    # Accounts made before verification existed are taken as verified.
    op.execute("UPDATE users SET email_verified_at = created_at")
    with op.batch_alter_table("usage_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("price_prompt", BIG, nullable=True))
        batch_op.add_column(sa.Column("price_completion", BIG, nullable=True))
        batch_op.add_column(sa.Column("price_multiplier", sa.Integer(), nullable=True))
    op.create_table(
        "redemption_codes",
        sa.Column("id", BIG, autoincrement=True, nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("hint", sa.String(length=16), nullable=False),
        sa.Column("credits", BIG, nullable=False),
        sa.Column("note", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", BIG, nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("redeemed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("redeemed_by", BIG, nullable=True),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"]),
        sa.ForeignKeyConstraint(["redeemed_by"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("code_hash"),
    )

    op.create_table(
        "deployment_states",
        sa.Column("deployment_id", sa.String(length=200), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("automatic", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("changed_by", BIG, nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("deployment_id"),
    )
    op.create_table(
        "deployment_stats",
        sa.Column("id", BIG, autoincrement=True, nullable=False),
        sa.Column("deployment_id", sa.String(length=200), nullable=False),
        sa.Column("replica", sa.String(length=64), nullable=False),
        sa.Column("minute", BIG, nullable=False),
        sa.Column("requests", BIG, nullable=False),
        sa.Column("errors", BIG, nullable=False),
        sa.Column("latency", sa.JSON(), nullable=False),
        sa.Column("in_flight", sa.Integer(), nullable=False),
        sa.Column("cooling_until", sa.Float(), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("deployment_id", "replica", "minute", name="uq_deployment_stats_minute"),
    )
    op.create_index("ix_deployment_stats_minute", "deployment_stats", ["minute"])
    op.create_table(
        "audit_log",
        sa.Column("id", BIG, autoincrement=True, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_id", BIG, nullable=True),
        sa.Column("actor", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["actor_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_created", "audit_log", ["created_at"])
    op.create_table(
        "email_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", BIG, nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index("ix_email_tokens_user_id", "email_tokens", ["user_id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION chatgate_settle({OLD_SETTLE_ARGS})")
        op.execute(SETTLE)


OLD_SETTLE_ARGS = (
    "text[], bigint[], bigint[], bigint[], text[], bigint[], bigint[], bigint[], bigint[], text[], text[],"
    " text[], timestamptz[], timestamptz"
)

# 0003's function, and the usage row's prices (credits per million prompt and completion tokens,
# the group multiplier in thousandths) written with the rest of the row.
SETTLE = """
CREATE FUNCTION chatgate_settle(
    p_trace text[], p_user bigint[], p_token bigint[], p_refund bigint[], p_model text[],
    p_prompt bigint[], p_completion bigint[], p_cost bigint[], p_latency bigint[], p_status text[],
    p_code text[], p_day text[], p_created timestamptz[], p_price_prompt bigint[],
    p_price_completion bigint[], p_price_multiplier bigint[], p_now timestamptz
) RETURNS boolean[] LANGUAGE plpgsql AS $$
DECLARE
    held boolean[];
BEGIN
    PERFORM 1 FROM users WHERE id IN (SELECT unnest(p_user)) ORDER BY id FOR NO KEY UPDATE;
    PERFORM 1 FROM api_tokens WHERE id IN (SELECT unnest(p_token)) ORDER BY id FOR NO KEY UPDATE;
    WITH s AS (  -- a request named twice settles once, the first time
        SELECT *, min(n) OVER (PARTITION BY user_id, trace_id) AS first
        FROM unnest(p_user, p_trace) WITH ORDINALITY AS s(user_id, trace_id, n)
    ), closed AS (
        DELETE FROM reservations r USING s WHERE r.user_id = s.user_id AND r.trace_id = s.trace_id
        RETURNING r.user_id, r.trace_id
    )
    SELECT array_agg((s.user_id IS NULL OR (c.user_id IS NOT NULL AND s.n = s.first)) ORDER BY s.n)
        INTO held FROM s LEFT JOIN closed c ON c.user_id = s.user_id AND c.trace_id = s.trace_id;
    INSERT INTO ledger (trace_id, kind, user_id, token_id, amount, created_at)
        SELECT s.trace_id, 'settle', s.user_id, s.token_id, s.refund, p_now
        FROM unnest(p_trace, p_user, p_token, p_refund, held) AS s(trace_id, user_id, token_id, refund, h)
        WHERE s.h AND s.user_id IS NOT NULL;
    UPDATE users u SET credits = u.credits + t.amount
        FROM (SELECT s.user_id, sum(s.refund) AS amount
              FROM unnest(p_user, p_refund, held) AS s(user_id, refund, h)
              WHERE s.h AND s.user_id IS NOT NULL GROUP BY s.user_id) t
        WHERE u.id = t.user_id AND t.amount <> 0;
    UPDATE api_tokens k SET spent = k.spent - t.amount, last_used_at = p_now
        FROM (SELECT s.token_id, sum(CASE WHEN s.h AND s.user_id IS NOT NULL THEN s.refund ELSE 0 END) AS amount
              FROM unnest(p_token, p_user, p_refund, held) AS s(token_id, user_id, refund, h)
              WHERE s.token_id IS NOT NULL GROUP BY s.token_id) t
        WHERE k.id = t.token_id;
    INSERT INTO usage_log (trace_id, user_id, token_id, model, prompt_tokens, completion_tokens, cost,
                           latency_ms, status, error_code, day, created_at, price_prompt,
                           price_completion, price_multiplier)
        SELECT s.trace_id, s.user_id, s.token_id, s.model, s.prompt, s.completion,
               CASE WHEN s.h THEN s.cost ELSE 0 END, s.latency, s.status, s.code, s.day, s.created,
               s.price_prompt, s.price_completion, s.price_multiplier
        FROM unnest(p_trace, p_user, p_token, p_model, p_prompt, p_completion, p_cost, p_latency,
                    p_status, p_code, p_day, p_created, p_price_prompt, p_price_completion,
                    p_price_multiplier, held)
             WITH ORDINALITY AS s(trace_id, user_id, token_id, model, prompt, completion, cost,
                                  latency, status, code, day, created, price_prompt,
                                  price_completion, price_multiplier, h, n)
        ORDER BY s.n;
    RETURN held;
END $$
"""


def _revision_0003() -> ModuleType:
    """Migration 0003's module, whose settle function a downgrade puts back."""
    path = Path(__file__).with_name("0003_open_reservations_and_leases.py")
    spec = importlib.util.spec_from_file_location("chatgate_migration_0003", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION chatgate_settle(text[], bigint[], bigint[], bigint[], text[], bigint[], bigint[],"
            " bigint[], bigint[], text[], text[], text[], timestamptz[], bigint[], bigint[], bigint[],"
            " timestamptz)"
        )
        op.execute(_revision_0003().SETTLE)
    op.drop_table("redemption_codes")
    with op.batch_alter_table("usage_log", schema=None) as batch_op:
        batch_op.drop_column("price_multiplier")
        batch_op.drop_column("price_completion")
        batch_op.drop_column("price_prompt")
    op.drop_index("ix_email_tokens_user_id", table_name="email_tokens")
    op.drop_table("email_tokens")
    op.drop_index("ix_audit_created", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_deployment_stats_minute", table_name="deployment_stats")
    op.drop_table("deployment_stats")
    op.drop_table("deployment_states")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_constraint("fk_users_group_name", type_="foreignkey")
        batch_op.drop_column("group_name")
        batch_op.drop_column("deleted_at")
        batch_op.drop_column("email_verified_at")
    op.drop_table("user_groups")
