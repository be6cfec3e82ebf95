"""What the sampler and pruner noted about each trial and study; enqueued trials wait without
a number; every objective's value

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sweep_experiments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("study_attrs", sa.JSON(), server_default="{}", nullable=False)
        )
    # SQLite rebuilds the table for the nullable change: keep its ids never reused.
    with op.batch_alter_table(
        "sweep_trials", schema=None, table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.add_column(
            sa.Column("system_attrs", sa.JSON(), server_default="{}", nullable=False)
        )
        batch_op.alter_column("number", existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column("values", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.execute("DELETE FROM sweep_trials WHERE number IS NULL")
    with op.batch_alter_table(
        "sweep_trials", schema=None, table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.drop_column("values")
        batch_op.alter_column("number", existing_type=sa.Integer(), nullable=False)
        batch_op.drop_column("system_attrs")
    with op.batch_alter_table("sweep_experiments", schema=None) as batch_op:
        batch_op.drop_column("study_attrs")
