"""Open reservations and the leases of the processes that hold them.

A reservation takes credits before a request runs; until now only its ledger row recorded it, and
a process that died before settling left those credits held for ever. Each open reservation now
has a row naming its owner (one serving process), deleted in the transaction that settles it, and
each owner keeps a lease row alive while it runs. Whatever an owner whose lease has lapsed (or
whose process is gone) still holds is refunded in full by the next process to sweep.

Reservations left open before this revision (a reserve row of the ledger with no settle row) are
given to an owner that holds no lease, so the first sweep after the upgrade gives them back.

On PostgreSQL, reserving and settling are functions (``chatgate_reserve``, ``chatgate_settle``), so
each is one round trip to the server instead of five to seven (see storage/fastpath_postgres.py).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 16:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "reservations",
        sa.Column("id", BigInt, autoincrement=True, nullable=False),
        sa.Column("user_id", BigInt, nullable=False),
        sa.Column("token_id", BigInt, nullable=True),
        sa.Column("trace_id", sa.String(length=128), nullable=False),
        sa.Column("amount", BigInt, nullable=False),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.ForeignKeyConstraint(["token_id"], ["api_tokens.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "trace_id", name="uq_reservations_user_trace"),
    )
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.create_index("ix_reservations_owner", ["owner"], unique=False)
    op.create_table(
        "leases",
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("process_start", BigInt, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner"),
    )
    op.execute(
        "INSERT INTO reservations (user_id, token_id, trace_id, amount, owner, created_at)"
        " SELECT r.user_id, r.token_id, r.trace_id, -r.amount, 'before-0003', r.created_at FROM ledger r"
        " WHERE r.kind = 'reserve' AND NOT EXISTS (SELECT 1 FROM ledger s WHERE s.kind = 'settle'"
        " AND s.user_id = r.user_id AND s.trace_id = r.trace_id)"
    )
    upgrade_functions()


# Take ``p_amount`` from the balance and the token's cap, both or neither, and open the reservation.
# False if not covered; a unique violation (the ledger's key) if the request id was reserved already.
RESERVE = """
CREATE FUNCTION chatgate_reserve(
    p_user bigint, p_token bigint, p_trace text, p_amount bigint, p_model text, p_owner text,
    p_now timestamptz
) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    UPDATE users SET credits = credits - p_amount WHERE id = p_user AND credits >= p_amount;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF p_token IS NOT NULL THEN
        UPDATE api_tokens SET spent = spent + p_amount
            WHERE id = p_token AND (quota_cap IS NULL OR spent + p_amount <= quota_cap);
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'chatgate: not covered';
        END IF;
    END IF;
    INSERT INTO ledger (trace_id, kind, user_id, token_id, amount, created_at)
        VALUES (p_trace, 'reserve', p_user, p_token, -p_amount, p_now);
    INSERT INTO reservations (user_id, token_id, trace_id, amount, model, owner, created_at)
        VALUES (p_user, p_token, p_trace, p_amount, p_model, p_owner, p_now);
    RETURN true;
EXCEPTION WHEN raise_exception THEN
    RETURN false;  -- the token's cap said no: the balance's debit is rolled back with this block
END $$
"""

# Settle a group of requests: close their open reservations (those a sweep has not refunded), write
# their ledger rows, give the refunds back, write their usage rows. Users, then tokens, are locked in
# id order first: the order a reservation takes them in, so no two transactions wait in a cycle.
# Returns, for each request in order, whether its reservation was still open (always, unmetered).
SETTLE = """
CREATE FUNCTION chatgate_settle(
    p_trace text[], p_user bigint[], p_token bigint[], p_refund bigint[], p_model text[],
    p_prompt bigint[], p_completion bigint[], p_cost bigint[], p_latency bigint[], p_status text[],
    p_code text[], p_day text[], p_created timestamptz[], p_now timestamptz
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
                           latency_ms, status, error_code, day, created_at)
        SELECT s.trace_id, s.user_id, s.token_id, s.model, s.prompt, s.completion,
               CASE WHEN s.h THEN s.cost ELSE 0 END, s.latency, s.status, s.code, s.day, s.created
        FROM unnest(p_trace, p_user, p_token, p_model, p_prompt, p_completion, p_cost, p_latency,
                    p_status, p_code, p_day, p_created, held)
             WITH ORDINALITY AS s(trace_id, user_id, token_id, model, prompt, completion, cost,
                                  latency, status, code, day, created, h, n)
        ORDER BY s.n;
    RETURN held;
END $$
"""


def upgrade_functions() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(RESERVE)
        op.execute(SETTLE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION chatgate_settle")
        op.execute("DROP FUNCTION chatgate_reserve")
    op.drop_table("leases")
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_index("ix_reservations_owner")
    op.drop_table("reservations")
