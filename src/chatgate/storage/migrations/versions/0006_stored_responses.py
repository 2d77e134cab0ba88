"""Stored Responses API answers, and the API each usage row came through.

``usage_log.api`` names the API of a request (chat.completions, responses, messages,
images.generations...); rows written before this revision were all Chat Completions or images, and
are marked chat.completions. ``responses`` keeps Responses API answers for ``GET /v1/responses/{id}``
and ``previous_response_id``, per user, until they expire.

On PostgreSQL, ``chatgate_settle`` (revision 0008's, which writes the prices too) writes each
settled request's usage row: it now takes the rows' APIs too (``p_api``, before ``p_now``).

Revision ID: 0006
Revises: 0008
Create Date: 2026-12-06 16:00:00
"""

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0008"
branch_labels = None
depends_on = None

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("usage_log", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("api", sa.String(length=32), nullable=False, server_default="chat.completions")
        )
    op.create_table(
        "responses",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", BigInt, nullable=True),
        sa.Column("token_id", BigInt, nullable=True),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("input_items", sa.JSON(), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["token_id"], ["api_tokens.id"]),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("responses", schema=None) as batch_op:
        batch_op.create_index("ix_responses_expires", ["expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_responses_user_id"), ["user_id"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION chatgate_settle({SETTLE_ARGS_0008})")
        op.execute(SETTLE)


SETTLE_ARGS_0008 = (
    "text[], bigint[], bigint[], bigint[], text[], bigint[], bigint[], bigint[], bigint[], text[], text[],"
    " text[], timestamptz[], bigint[], bigint[], bigint[], timestamptz"
)
SETTLE_ARGS = (  # 0008's, and the APIs (text[]) before the time
    "text[], bigint[], bigint[], bigint[], text[], bigint[], bigint[], bigint[], bigint[], text[], text[],"
    " text[], timestamptz[], bigint[], bigint[], bigint[], text[], timestamptz"
)

# Revision 0008's chatgate_settle, each usage row with its API.
SETTLE = """
CREATE FUNCTION chatgate_settle(
    p_trace text[], p_user bigint[], p_token bigint[], p_refund bigint[], p_model text[],
    p_prompt bigint[], p_completion bigint[], p_cost bigint[], p_latency bigint[], p_status text[],
    p_code text[], p_day text[], p_created timestamptz[], p_price_prompt bigint[],
    p_price_completion bigint[], p_price_multiplier bigint[], p_api text[], p_now timestamptz
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
                           price_completion, price_multiplier, api)
        SELECT s.trace_id, s.user_id, s.token_id, s.model, s.prompt, s.completion,
               CASE WHEN s.h THEN s.cost ELSE 0 END, s.latency, s.status, s.code, s.day, s.created,
               s.price_prompt, s.price_completion, s.price_multiplier, s.api
        FROM unnest(p_trace, p_user, p_token, p_model, p_prompt, p_completion, p_cost, p_latency,
                    p_status, p_code, p_day, p_created, p_price_prompt, p_price_completion,
                    p_price_multiplier, p_api, held)
             WITH ORDINALITY AS s(trace_id, user_id, token_id, model, prompt, completion, cost,
                                  latency, status, code, day, created, price_prompt,
                                  price_completion, price_multiplier, api, h, n)
        ORDER BY s.n;
    RETURN held;
END $$
"""


def _settle_of_0008() -> str:
    path = Path(__file__).with_name("0008_operations.py")
    spec = importlib.util.spec_from_file_location("chatgate_migration_0008", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.SETTLE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION chatgate_settle({SETTLE_ARGS})")
        op.execute(_settle_of_0008())
    with op.batch_alter_table("responses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_responses_user_id"))
        batch_op.drop_index("ix_responses_expires")
    op.drop_table("responses")
    with op.batch_alter_table("usage_log", schema=None) as batch_op:
        batch_op.drop_column("api")
