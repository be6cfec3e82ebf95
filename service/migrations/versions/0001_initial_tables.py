"""initial tables

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sweep_experiments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("n_trials", sa.Integer(), nullable=False),
        sa.Column("max_concurrent", sa.Integer(), nullable=False),
        sa.Column("trial_count", sa.Integer(), nullable=False),
        sa.Column("finish_seq", sa.Integer(), nullable=False),
        sa.Column("best_trial_id", sa.Integer(), nullable=True),
        sa.Column("best_value", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweep_experiments")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("sweep_experiments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sweep_experiments_state"), ["state"], unique=False)

    op.create_table(
        "sweep_workers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweep_workers")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "sweep_trials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("best_epoch", sa.Integer(), nullable=True),
        sa.Column("last_epoch", sa.Integer(), nullable=False),
        sa.Column("last_objective", sa.Float(), nullable=True),
        sa.Column("finish_seq", sa.Integer(), nullable=True),
        sa.Column("worker_id", sa.Integer(), nullable=True),
        sa.Column("failure_reason", sa.String(length=32), nullable=True),
        sa.Column("failure_message", sa.Text(), nullable=True),
        sa.Column("has_weights", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["sweep_experiments.id"],
            name=op.f("fk_sweep_trials_experiment_id_sweep_experiments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["worker_id"],
            ["sweep_workers.id"],
            name=op.f("fk_sweep_trials_worker_id_sweep_workers"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweep_trials")),
        sa.UniqueConstraint("experiment_id", "number", name=op.f("uq_sweep_trials_experiment_id")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("sweep_trials", schema=None) as batch_op:
        batch_op.create_index(
            "ix_sweep_trials_experiment_finish_seq", ["experiment_id", "finish_seq"], unique=False
        )
        batch_op.create_index(
            "ix_sweep_trials_experiment_state_value",
            ["experiment_id", "state", "value"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_sweep_trials_worker_id"), ["worker_id"], unique=False)

    op.create_table(
        "sweep_trial_metrics",
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("objective", sa.Float(), nullable=True),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["sweep_trials.id"],
            name=op.f("fk_sweep_trial_metrics_trial_id_sweep_trials"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("trial_id", "epoch", name=op.f("pk_sweep_trial_metrics")),
    )
    op.create_table(
        "sweep_trial_weights",
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["sweep_trials.id"],
            name=op.f("fk_sweep_trial_weights_trial_id_sweep_trials"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("trial_id", name=op.f("pk_sweep_trial_weights")),
    )


def downgrade() -> None:
    op.drop_table("sweep_trial_weights")
    op.drop_table("sweep_trial_metrics")
    with op.batch_alter_table("sweep_trials", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sweep_trials_worker_id"))
        batch_op.drop_index("ix_sweep_trials_experiment_state_value")
        batch_op.drop_index("ix_sweep_trials_experiment_finish_seq")

    op.drop_table("sweep_trials")
    op.drop_table("sweep_workers")
    with op.batch_alter_table("sweep_experiments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sweep_experiments_state"))

    op.drop_table("sweep_experiments")
