"""Submissions with an Idempotency-Key (the same key submits once per project), and the
best trial's number, which names it to users as EXPERIMENT/NUMBER

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


def upgrade() -> None:
    with op.batch_alter_table("sweep_experiments") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(200), nullable=True))
        batch.create_index(
            "ix_sweep_experiments_project_idempotency_key",
            ["project", "idempotency_key"],
            unique=True,
        )
        batch.add_column(sa.Column("best_trial_number", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE sweep_experiments SET best_trial_number = (SELECT number FROM sweep_trials "
        "WHERE sweep_trials.id = sweep_experiments.best_trial_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("sweep_experiments") as batch:
        batch.drop_column("best_trial_number")
        batch.drop_index("ix_sweep_experiments_project_idempotency_key")
        batch.drop_column("idempotency_key")
