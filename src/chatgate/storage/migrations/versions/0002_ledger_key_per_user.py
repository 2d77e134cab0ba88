"""A ledger entry's request id is unique per user, not across users.

A caller may choose its request id (``x-request-id``). With the id unique across the whole ledger,
one user's request was refused as "already charged" because another user had used the same id.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 22:40:00
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.drop_constraint("uq_ledger_trace_kind", type_="unique")
        batch_op.create_unique_constraint("uq_ledger_user_trace_kind", ["user_id", "trace_id", "kind"])


def downgrade() -> None:
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.drop_constraint("uq_ledger_user_trace_kind", type_="unique")
        batch_op.create_unique_constraint("uq_ledger_trace_kind", ["trace_id", "kind"])
