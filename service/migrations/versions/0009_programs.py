"""Programs: the one an experiment names, those a worker runs, a trial's output and files

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sweep_experiments", sa.Column("needs_program", sa.String(64), nullable=True))
    op.add_column("sweep_experiments", sa.Column("needs_gpus", sa.Integer(), nullable=True))
    op.add_column(
        "sweep_workers", sa.Column("gpus", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "sweep_workers", sa.Column("programs", sa.JSON(), server_default="[]", nullable=False)
    )
    op.add_column("sweep_trials", sa.Column("output", sa.Text(), nullable=True))
    op.add_column(
        "sweep_trials",
        sa.Column("has_outputs", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.create_table(
        "sweep_trial_outputs",
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["sweep_trials.id"],
            name=op.f("fk_sweep_trial_outputs_trial_id_sweep_trials"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("trial_id", name=op.f("pk_sweep_trial_outputs")),
    )


def downgrade() -> None:
    op.drop_table("sweep_trial_outputs")
    with op.batch_alter_table(
        "sweep_trials", table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.drop_column("has_outputs")
        batch_op.drop_column("output")
    with op.batch_alter_table(
        "sweep_workers", table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.drop_column("gpus")
        batch_op.drop_column("programs")
    with op.batch_alter_table(
        "sweep_experiments", table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.drop_column("needs_gpus")
        batch_op.drop_column("needs_program")
