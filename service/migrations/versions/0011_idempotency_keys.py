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


def downgrade() -> None:
    op.drop_index("ix_sweep_experiments_project_idempotency_key", "sweep_experiments")
    for column in ("best_trial_number", "idempotency_key"):
        if op.get_bind().dialect.name == "sqlite":  # in place (SQLite 3.35 and later)
            op.execute(f"ALTER TABLE sweep_experiments DROP COLUMN {column}")
        else:
            op.drop_column("sweep_experiments", column)
