"""Server settings, read from SWEEP_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sweep.service.store import FileStore, S3Store, open_store

DEFAULT_DATA_DIR = Path("sweep-data")


LogFormat = Literal["text", "json"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWEEP_", extra="ignore")

    # Embedded default: a SQLite file in the data directory.
    database_url: str = ""
    data_dir: Path = DEFAULT_DATA_DIR
    host: str = "127.0.0.1"
    port: int = 8642
    # Longest a worker's claim may wait server-side for work (long poll).
    max_claim_wait_seconds: float = 30.0
    # How often a waiting claim looks at the database again when nothing woke it.
    claim_poll_seconds: float = 0.5
    # At most this long before a claim that joined the waiting ones without looking for work
    # itself (the service was quiet) is checked: refused, or given back its worker's trial.
    claim_check_seconds: float = 0.2
    # A running experiment's plots are drawn again at most this often (an ended one's once).
    plot_refresh_seconds: float = 5.0
    # A claimed trial whose worker sends nothing (heartbeat or report) for this long is
    # handed out again; workers heartbeat at a quarter of it.
    lease_seconds: float = 60.0
    # How often the server looks for expired leases.
    lease_check_seconds: float = 5.0
    # Bearer tokens on every route but /healthz. Turning this off is for a trusted laptop.
    auth: bool = True
    # How long an API process trusts a token it has checked without reading SQL again: a
    # token revoked through another process (or in SQL) is refused here within this
    # long; one revoked through this process, at once. 0: every call reads SQL.
    token_cache_seconds: float = 5.0
    # Largest experiment spec, and largest other JSON body (reports, claims...).
    max_spec_bytes: int = 1024 * 1024
    max_request_bytes: int = 256 * 1024
    # Submissions a token may make in a minute (per API process).
    max_submissions_per_minute: int = 60
    # Experiments whose in-memory study an API process keeps; the least recently used beyond
    # this are dropped and rebuilt from SQL when next needed.
    max_cached_studies: int = 100
    # From this many trials on, an experiment's next suggestion is asked in the background
    # after each claim instead of during the next one (TPE's ask grows with the history),
    # and a worker claims its next trial before it tells the end of the one it trained; the
    # history a suggestion sees is then a claim or a result older. "off": never.
    ask_ahead_after: int | None = 1000
    # Where weights, checkpoints, outputs and datasets are kept: file:///path or
    # s3://bucket/prefix (default: the artifacts folder of the data directory).
    artifacts: str = ""
    # An S3-compatible server's URL (MinIO, Ceph, R2); empty: AWS itself.
    s3_endpoint_url: str = ""
    s3_region: str = ""
    # Largest artifact (weights, a checkpoint, outputs) an upload may carry; it is streamed
    # to the store, never held in memory.
    max_artifact_bytes: int = 20 * 2**30
    # Largest dataset upload: it is parsed in memory, so it has a cap of its own.
    max_dataset_bytes: int = 512 * 2**20
    # How long a pre-signed URL for a direct transfer to or from S3 stays valid.
    presign_seconds: int = 3600
    # Webhooks: how often due deliveries are sent, and the first retry's wait (doubling).
    webhook_poll_seconds: float = 1.0
    webhook_retry_seconds: float = 5.0
    # How often deleted artifacts' objects are removed from the store, and how often the
    # store is swept for objects no row references (older than artifact_gc_grace_seconds,
    # so that uploads under way are left alone).
    artifact_purge_seconds: float = 5.0
    artifact_gc_seconds: float = 6 * 3600
    artifact_gc_grace_seconds: float = 2 * 3600
    # Log lines as text or as JSON objects (server and workers).
    log_format: LogFormat = "text"

    @field_validator("ask_ahead_after", mode="before")
    @classmethod
    def _off(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() == "off" else value

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'sweep.db').resolve()}"

    def resolved_artifacts(self) -> str:
        return self.artifacts or (self.data_dir / "artifacts").resolve().as_uri()

    def open_store(self) -> FileStore | S3Store:
        return open_store(
            self.resolved_artifacts(),
            endpoint=self.s3_endpoint_url,
            region=self.s3_region,
            spool=(self.data_dir / "incoming").resolve(),
        )
