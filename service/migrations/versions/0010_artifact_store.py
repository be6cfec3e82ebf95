"""The artifact store: SQL keeps what each object is, the store keeps its bytes

The tables that held bytes stay: `sweep migrate` (and the server as it starts) moves their
rows into the store and empties them (sweep.service.legacy_blobs).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# How SQLite's reflected, unnamed foreign key of 0007 is named, so it can be dropped.
NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def upgrade() -> None:
    op.create_table(
        "sweep_artifacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["sweep_trials.id"],
            name=op.f("fk_sweep_artifacts_trial_id_sweep_trials"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweep_artifacts")),
        sa.UniqueConstraint("key", name=op.f("uq_sweep_artifacts_key")),
        sa.UniqueConstraint("trial_id", "kind", name=op.f("uq_sweep_artifacts_trial_id")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "sweep_deleted_artifacts",
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_sweep_deleted_artifacts")),
    )
    blob_key = _blob_foreign_key()
    with op.batch_alter_table(
        "sweep_datasets", naming_convention=NAMES, table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.drop_constraint(blob_key, type_="foreignkey")
        batch_op.add_column(sa.Column("artifact_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            "fk_sweep_datasets_artifact_id_sweep_artifacts",
            "sweep_artifacts",
            ["artifact_id"],
            ["id"],
        )
        batch_op.create_index("ix_sweep_datasets_sha256", ["sha256"])


def downgrade() -> None:
    moved = op.get_bind().scalar(sa.text("SELECT count(*) FROM sweep_artifacts"))
    if moved:
        raise RuntimeError(
            f"{moved} artifacts are in the artifact store: run `sweep artifacts migrate "
            "--into-sql` to move them back into SQL before downgrading"
        )
    with op.batch_alter_table(
        "sweep_datasets", naming_convention=NAMES, table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.drop_index("ix_sweep_datasets_sha256")
        batch_op.drop_constraint(
            "fk_sweep_datasets_artifact_id_sweep_artifacts", type_="foreignkey"
        )
        batch_op.drop_column("artifact_id")
        batch_op.create_foreign_key(
            "fk_sweep_datasets_sha256_sweep_blobs", "sweep_blobs", ["sha256"], ["sha256"]
        )
    op.drop_table("sweep_deleted_artifacts")
    op.drop_table("sweep_artifacts")


def _blob_foreign_key() -> str:
    """The name the database gave 0007's key from sweep_datasets to sweep_blobs."""
    for key in sa.inspect(op.get_bind()).get_foreign_keys("sweep_datasets"):
        if key["referred_table"] == "sweep_blobs":
            return key["name"] or "fk_sweep_datasets_sha256_sweep_blobs"
    raise RuntimeError("sweep_datasets has no foreign key to sweep_blobs")
