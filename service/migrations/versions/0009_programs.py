"""Programs: the one an experiment names, those a worker runs, and a trial's output

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
    op.add_column(
        "sweep_workers", sa.Column("programs", sa.JSON(), server_default="[]", nullable=False)
    )
    op.add_column("sweep_trials", sa.Column("output", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table(
        "sweep_trials", table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.drop_column("output")
    with op.batch_alter_table(
        "sweep_workers", table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.drop_column("programs")
    with op.batch_alter_table(
        "sweep_experiments", table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.drop_column("needs_program")
