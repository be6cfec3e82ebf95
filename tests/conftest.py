"""Fixtures: a fresh database per test on each backend, in-process apps and real processes.

PostgreSQL tests use the server at SWEEP_TEST_PG (default 127.0.0.1:5432, user postgres) and a
new database per test. When it is unreachable they are skipped locally but fail under CI=true.
"""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from sweep.service.app import create_app
from sweep.service.config import Settings
from tests import processes
from tests.helpers import authorize
from tests.processes import ServerProcess

PG_ADMIN = os.environ.get("SWEEP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _pg_unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required in CI and unreachable: {reason}")
    pytest.skip(f"PostgreSQL unreachable: {reason}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    processes.ITEMS.update((item.nodeid, item) for item in items)  # checked by processes.spawn


@pytest.fixture
def postgresql_url() -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards."""
    import psycopg

    name = f"sweep_test_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        _pg_unavailable(str(exc))
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        yield f"{base}/{name}"
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sweep.db'}"


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=db_url, data_dir=tmp_path, claim_poll_seconds=0.05)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The real app in process (real SQL, real Optuna), reached through httpx."""
    with TestClient(create_app(settings)) as test_client:
        yield authorize(test_client)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one thread: small models train faster, and results do not depend on the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def server(sqlite_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """A real `sweep server` process on SQLite."""
    process = ServerProcess(sqlite_url, tmp_path / "logs")
    process.start()
    yield process
    process.stop()
