"""Server settings, read from SWEEP_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

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
    # A claimed trial whose worker sends nothing (heartbeat or report) for this long is
    # handed out again; workers heartbeat at a quarter of it.
    lease_seconds: float = 60.0
    # How often the server looks for expired leases.
    lease_check_seconds: float = 5.0
    # Bearer tokens on every route but /healthz. Turning this off is for a trusted laptop.
    auth: bool = True
    # Largest experiment spec, and largest other JSON body (reports, claims...).
    max_spec_bytes: int = 1024 * 1024
    max_request_bytes: int = 256 * 1024
    # Submissions a token may make in a minute (per API process).
    max_submissions_per_minute: int = 60
    # Experiments whose in-memory study an API process keeps; the least recently used beyond
    # this are dropped and rebuilt from SQL when next needed.
    max_cached_studies: int = 100
    # Largest weights file a worker may upload.
    max_weights_bytes: int = 512 * 1024 * 1024
    # Log lines as text or as JSON objects (server and workers).
    log_format: LogFormat = "text"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'sweep.db').resolve()}"
