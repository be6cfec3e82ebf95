"""What an experiment needs of a worker (device, memory, plugins), and what a worker has

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sweep_experiments", sa.Column("needs_device", sa.String(16), nullable=True))
    op.add_column("sweep_experiments", sa.Column("needs_memory_gb", sa.Float(), nullable=True))
    op.add_column("sweep_experiments", sa.Column("needs_model", sa.String(200), nullable=True))
    op.add_column("sweep_experiments", sa.Column("needs_dataset", sa.String(200), nullable=True))
    op.add_column("sweep_workers", sa.Column("device_memory_gb", sa.Float(), nullable=True))
    for column in ("models", "datasets"):
        op.add_column(
            "sweep_workers", sa.Column(column, sa.JSON(), server_default="[]", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table(
        "sweep_workers", table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.drop_column("datasets")
        batch_op.drop_column("models")
        batch_op.drop_column("device_memory_gb")
    with op.batch_alter_table(
        "sweep_experiments", table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.drop_column("needs_dataset")
        batch_op.drop_column("needs_model")
        batch_op.drop_column("needs_memory_gb")
        batch_op.drop_column("needs_device")
