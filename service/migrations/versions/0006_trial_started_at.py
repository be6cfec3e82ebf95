"""When a trial's latest attempt started, for the dashboard's timeline

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "sweep_trials", sa.Column("started_at", sa.DateTime(timezone=True), nullable=True)
    )
    # Trials started before this column existed were created when they first started.
    op.execute("UPDATE sweep_trials SET started_at = created_at WHERE number IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table(
        "sweep_trials", schema=None, table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.drop_column("started_at")
