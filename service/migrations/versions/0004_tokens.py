"""API tokens with roles, and experiments grouped by project

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sweep_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("project", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweep_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_sweep_tokens_token_hash")),
    )
    with op.batch_alter_table("sweep_experiments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("project", sa.String(length=100), server_default="default", nullable=False)
        )
        batch_op.create_index(batch_op.f("ix_sweep_experiments_project"), ["project"])
    with op.batch_alter_table("sweep_workers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("project", sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sweep_workers", schema=None) as batch_op:
        batch_op.drop_column("project")
    with op.batch_alter_table("sweep_experiments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sweep_experiments_project"))
        batch_op.drop_column("project")
    op.drop_table("sweep_tokens")
