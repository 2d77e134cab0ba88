"""Per-user limits (requests and tokens per minute, requests at once) and invite codes.

A user's limit columns hold the operator's setting for that user; NULL means the server's default.
Invite codes, for ``CHATGATE_SIGNUP=invite``, are kept as hashes; a user remembers which one it
signed up with.

Revision ID: 0004
Revises: 0006
Create Date: 2026-11-26 16:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0006"
branch_labels = None
depends_on = None

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "invites",
        sa.Column("id", BigInt, autoincrement=True, nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("note", sa.String(length=200), nullable=False),
        sa.Column("max_uses", BigInt, nullable=False),
        sa.Column("uses", BigInt, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("code_hash"),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rpm_limit", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("tpm_limit", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("concurrency_limit", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("invite_id", BigInt, nullable=True))
        batch_op.create_foreign_key("fk_users_invite_id", "invites", ["invite_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_constraint("fk_users_invite_id", type_="foreignkey")
        batch_op.drop_column("invite_id")
        batch_op.drop_column("concurrency_limit")
        batch_op.drop_column("tpm_limit")
        batch_op.drop_column("rpm_limit")
    op.drop_table("invites")
