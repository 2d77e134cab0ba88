"""Open reservations and the leases of the processes that hold them.

A reservation takes credits before a request runs; until now only its ledger row recorded it, and
a process that died before settling left those credits held for ever. Each open reservation now
has a row naming its owner (one serving process), deleted in the transaction that settles it, and
each owner keeps a lease row alive while it runs. Whatever an owner whose lease has lapsed (or
whose process is gone) still holds is refunded in full by the next process to sweep.

Reservations left open before this revision (a reserve row of the ledger with no settle row) are
given to an owner that holds no lease, so the first sweep after the upgrade gives them back.

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


def downgrade() -> None:
    op.drop_table("leases")
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_index("ix_reservations_owner")
    op.drop_table("reservations")
