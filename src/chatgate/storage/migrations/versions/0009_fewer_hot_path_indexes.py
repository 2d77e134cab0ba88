"""Two indexes fewer on the rows every request writes.

``ix_ledger_user_id`` repeats the first column of the ledger's unique key (user, trace id, kind),
which serves every lookup by user. ``ix_reservations_owner`` served no query: a sweep reads every
open reservation (the table holds only requests in flight). Each was one more B-tree page rewritten
in every commit of a reservation or a settlement (docs/benchmarks.md).

Revision ID: 0009
Revises: 0004
Create Date: 2026-12-07 02:00:00
"""

from alembic import op

revision = "0009"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_user_id")
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_index("ix_reservations_owner")


def downgrade() -> None:
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.create_index("ix_reservations_owner", ["owner"], unique=False)
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.create_index("ix_ledger_user_id", ["user_id"], unique=False)
