"""When a running trial's training ended (its worker then sends the model and the result, and
the trial holds no slot)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# No batch mode (see 0011): SQLite adds and drops columns in place.


def upgrade() -> None:
    op.add_column(
        "sweep_trials", sa.Column("trained_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":  # in place (SQLite 3.35 and later)
        op.execute("ALTER TABLE sweep_trials DROP COLUMN trained_at")
    else:
        op.drop_column("sweep_trials", "trained_at")
