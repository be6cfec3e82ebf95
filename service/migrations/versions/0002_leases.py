"""Leases and attempts: trials expire and are handed out again

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sweep_experiments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("max_retries", sa.Integer(), server_default="3", nullable=False)
        )
    with op.batch_alter_table("sweep_trials", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempt", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(sa.Column("token", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("retries", sa.Integer(), server_default="0", nullable=False))
        batch_op.create_index(
            "ix_sweep_trials_state_lease", ["state", "lease_expires_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("sweep_trials", schema=None) as batch_op:
        batch_op.drop_index("ix_sweep_trials_state_lease")
        batch_op.drop_column("retries")
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("token")
        batch_op.drop_column("attempt")
    with op.batch_alter_table("sweep_experiments", schema=None) as batch_op:
        batch_op.drop_column("max_retries")
