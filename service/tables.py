"""SQL tables: the single source of truth for experiments, trials, metrics and workers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Experiment(Base):
    __tablename__ = "sweep_experiments"
    __table_args__ = (
        # A submission's Idempotency-Key names one experiment of its project (NULLs differ).
        Index(
            "ix_sweep_experiments_project_idempotency_key",
            "project",
            "idempotency_key",
            unique=True,
        ),
        # AUTOINCREMENT: SQLite never reuses the id of a deleted row.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # Tokens of one project never see another's experiments.
    project: Mapped[str] = mapped_column(
        String(100), default="default", server_default="default", index=True
    )
    state: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    metric: Mapped[str] = mapped_column(String(64))
    direction: Mapped[str] = mapped_column(String(8))
    n_trials: Mapped[int] = mapped_column(Integer)
    max_concurrent: Mapped[int] = mapped_column(Integer)
    # Times a trial whose worker vanished is handed out again before it fails as "lost".
    max_retries: Mapped[int] = mapped_column(Integer, default=3, server_default="3")
    # Trials created so far; the next trial's number. Only changed under the row lock.
    trial_count: Mapped[int] = mapped_column(Integer, default=0)
    # Bumped under the row lock each time a trial finishes, so finishes commit in this order.
    finish_seq: Mapped[int] = mapped_column(Integer, default=0)
    # Errors in a row (trials failing with reason "error"); too many fail the experiment.
    consecutive_errors: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Past this (budget.timeout_s after creation) the experiment stops.
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Why it ended, when not simply by finishing its budget.
    stop_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    # What the sampler keeps on the study (a QMC sequence position, NSGA-II's parents), so
    # every API process and every rebuilt study continues from the same state.
    study_attrs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    best_trial_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    best_trial_number: Mapped[int | None] = mapped_column(Integer, nullable=True)  # its name
    best_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    # requirements.device and .min_device_memory_gb, as columns a claim can filter on
    needs_device: Mapped[str | None] = mapped_column(String(16), nullable=True)
    needs_memory_gb: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The plugin model and dataset a worker must have installed (None: bundled ones)
    needs_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    needs_dataset: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The program a worker must run (None: the built-in trainer, which every worker has)
    needs_program: Mapped[str | None] = mapped_column(String(64), nullable=True)
    needs_gpus: Mapped[int | None] = mapped_column(Integer, nullable=True)  # on one worker
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Artifact(Base):
    """What one object in the artifact store is: a trial's weights, checkpoint or outputs, or
    an uploaded dataset's arrays. The bytes are in the store under `key`, never in SQL."""

    __tablename__ = "sweep_artifacts"
    # One of each kind per trial; replacing it points the row at a new key.
    __table_args__ = (UniqueConstraint("trial_id", "kind"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(400), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # weights, checkpoint, outputs, dataset
    trial_id: Mapped[int | None] = mapped_column(
        ForeignKey("sweep_trials.id", ondelete="CASCADE"), nullable=True
    )
    epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)  # a checkpoint's
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DeletedArtifact(Base):
    """A store object whose row is gone, to remove from the store once that has committed
    (written in the same transaction as the deletion, so no object is forgotten)."""

    __tablename__ = "sweep_deleted_artifacts"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    deleted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Webhook(Base):
    """A URL an admin registered for a project's events (never one a spec names: the server
    calls no address a user chose). Its secret signs every delivery (HMAC-SHA256)."""

    __tablename__ = "sweep_webhooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project: Mapped[str] = mapped_column(String(100), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(Base):
    """One event for one webhook: written in the transaction that made it happen (so none is
    lost, and none is sent for a change rolled back), then sent and retried with backoff."""

    __tablename__ = "sweep_webhook_deliveries"
    __table_args__ = (Index("ix_sweep_webhook_deliveries_due", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    webhook_id: Mapped[int] = mapped_column(
        ForeignKey("sweep_webhooks.id", ondelete="CASCADE"), index=True
    )
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # delivered, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class UserDataset(Base):
    """A dataset a user uploaded (CSV or NPZ), validated and stored as arrays X and y."""

    __tablename__ = "sweep_datasets"
    __table_args__ = (UniqueConstraint("project", "name"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64), index=True)  # of the arrays (content_hash)
    # The arrays, as an NPZ in the store (None only before `sweep migrate` has moved them).
    artifact_id: Mapped[int | None] = mapped_column(ForeignKey("sweep_artifacts.id"), nullable=True)
    format: Mapped[str] = mapped_column(String(8))  # what was uploaded: csv or npz
    task: Mapped[str] = mapped_column(String(16))
    n_samples: Mapped[int] = mapped_column(Integer)
    n_features: Mapped[int] = mapped_column(Integer)
    input_shape: Mapped[list[int]] = mapped_column(JSON)  # one sample's
    # Class labels in index order (classification and binary); None for regression.
    classes: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    target: Mapped[str | None] = mapped_column(String(200), nullable=True)  # a CSV's column
    size: Mapped[int] = mapped_column(Integer)  # bytes uploaded
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Worker(Base):
    __tablename__ = "sweep_workers"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    hostname: Mapped[str] = mapped_column(String(255))
    device: Mapped[str] = mapped_column(String(64))
    device_memory_gb: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Plugin models and datasets installed where it runs
    models: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    datasets: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    programs: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    gpus: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The project of the token that registered it; only that project's tokens may claim for it.
    project: Mapped[str | None] = mapped_column(String(100), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Trial(Base):
    __tablename__ = "sweep_trials"
    __table_args__ = (
        UniqueConstraint("experiment_id", "number"),
        Index("ix_sweep_trials_experiment_state_value", "experiment_id", "state", "value"),
        Index("ix_sweep_trials_experiment_finish_seq", "experiment_id", "finish_seq"),
        Index("ix_sweep_trials_state_lease", "state", "lease_expires_at"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("sweep_experiments.id", ondelete="CASCADE")
    )
    # The trial's place in the study; an enqueued trial gets its number when it first starts.
    number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    # What the sampler and pruner noted about the trial (Optuna's system attrs: a grid point,
    # rungs passed, a CMA-ES state), so a study rebuilt from SQL decides as the first did.
    system_attrs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Every objective's value, in spec order (the first is `value`).
    values: Mapped[list[float] | None] = mapped_column(JSON, nullable=True)
    best_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Epochs reported so far and the objective at the last one (a pruned trial's value).
    last_epoch: Mapped[int] = mapped_column(Integer, default=0)
    last_objective: Mapped[float | None] = mapped_column(Float, nullable=True)
    finish_seq: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Each claim of the trial is an attempt with its own token; calls carrying an older
    # token are refused (fencing). The lease is kept alive by heartbeats and reports.
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The epoch the current attempt resumed after (from a checkpoint); 0: it started afresh.
    resumed_from: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    worker_id: Mapped[int | None] = mapped_column(
        ForeignKey("sweep_workers.id", ondelete="SET NULL"), nullable=True, index=True
    )
    failure_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    failure_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The tail of its program's output (stdout and stderr), from its last attempt that ended.
    output: Mapped[str | None] = mapped_column(Text, nullable=True)
    has_weights: Mapped[bool] = mapped_column(default=False)
    # A program's trial: the files it left in SWEEP_OUTPUT_DIR are stored (an Artifact).
    has_outputs: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # When its latest attempt started (None: never started)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # When its worker said the attempt's training ended, while it still sends the model and
    # the result: the trial then holds no slot of max_concurrent, and the worker may claim
    # its next one (None: training, or never started).
    trained_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class TrialMetric(Base):
    """One epoch's report of one trial."""

    __tablename__ = "sweep_trial_metrics"

    trial_id: Mapped[int] = mapped_column(
        ForeignKey("sweep_trials.id", ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    objective: Mapped[float | None] = mapped_column(Float, nullable=True)
    values: Mapped[dict[str, float]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    """A bearer token, kept only as a hash; shown once when it is made."""

    __tablename__ = "sweep_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))  # the first characters, to tell tokens apart
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    project: Mapped[str | None] = mapped_column(String(100), nullable=True)  # None: all
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


# --- before the artifact store --------------------------------------------------------------
# Versions before the artifact store kept bytes in these tables. `sweep migrate` moves each
# row into the store and deletes it, so they are empty once it has run; nothing else reads
# them. (`sweep artifacts migrate --into-sql` moves them back, for a downgrade.)


def _legacy(name: str, *columns: Column[Any]) -> Table:
    return Table(
        name,
        Base.metadata,
        Column(
            "trial_id", Integer, ForeignKey("sweep_trials.id", ondelete="CASCADE"), primary_key=True
        ),
        *columns,
        Column("data", LargeBinary, nullable=False),
        Column("size", Integer, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
    )


LEGACY_WEIGHTS = _legacy("sweep_trial_weights")
LEGACY_CHECKPOINTS = _legacy("sweep_trial_checkpoints", Column("epoch", Integer, nullable=False))
LEGACY_OUTPUTS = _legacy("sweep_trial_outputs")
LEGACY_BLOBS = Table(
    "sweep_blobs",
    Base.metadata,
    Column("sha256", String(64), primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("size", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)
