"""Checkpoints to resume from; experiments that fail, time out, and say why

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sweep_trial_checkpoints",
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["sweep_trials.id"],
            name=op.f("fk_sweep_trial_checkpoints_trial_id_sweep_trials"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("trial_id", name=op.f("pk_sweep_trial_checkpoints")),
    )
    with op.batch_alter_table("sweep_experiments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("consecutive_errors", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("stop_reason", sa.String(length=500), nullable=True))
    with op.batch_alter_table("sweep_trials", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("resumed_from", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("sweep_trials", schema=None) as batch_op:
        batch_op.drop_column("resumed_from")
    with op.batch_alter_table("sweep_experiments", schema=None) as batch_op:
        batch_op.drop_column("stop_reason")
        batch_op.drop_column("deadline_at")
        batch_op.drop_column("consecutive_errors")
    op.drop_table("sweep_trial_checkpoints")
