"""Submissions with an Idempotency-Key (the same key submits once per project), the best
trial's number (which names it to users as EXPERIMENT/NUMBER), and webhooks with their
deliveries

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# No batch mode: on SQLite it copies the table and drops the old one, and dropping
# sweep_experiments would cascade to every trial. SQLite adds and drops columns in place.


def upgrade() -> None:
    op.add_column("sweep_experiments", sa.Column("idempotency_key", sa.String(200), nullable=True))
    op.create_index(
        "ix_sweep_experiments_project_idempotency_key",
        "sweep_experiments",
        ["project", "idempotency_key"],
        unique=True,
    )
    op.add_column("sweep_experiments", sa.Column("best_trial_number", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE sweep_experiments SET best_trial_number = (SELECT number FROM sweep_trials "
        "WHERE sweep_trials.id = sweep_experiments.best_trial_id)"
    )
    op.create_table(
        "sweep_webhooks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project", sa.String(100), nullable=False),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_sweep_webhooks_project", "sweep_webhooks", ["project"])
    op.create_table(
        "sweep_webhook_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("webhook_id", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["webhook_id"], ["sweep_webhooks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_sweep_webhook_deliveries_webhook_id", "sweep_webhook_deliveries", ["webhook_id"]
    )
    op.create_index(
        "ix_sweep_webhook_deliveries_due",
        "sweep_webhook_deliveries",
        ["state", "next_attempt_at"],
    )


def downgrade() -> None:
    op.drop_table("sweep_webhook_deliveries")
    op.drop_table("sweep_webhooks")
    op.drop_index("ix_sweep_experiments_project_idempotency_key", "sweep_experiments")
    for column in ("best_trial_number", "idempotency_key"):
        if op.get_bind().dialect.name == "sqlite":  # in place (SQLite 3.35 and later)
            op.execute(f"ALTER TABLE sweep_experiments DROP COLUMN {column}")
        else:
            op.drop_column("sweep_experiments", column)
