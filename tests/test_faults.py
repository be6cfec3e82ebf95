"""Whatever the database does, the service answers 503 (never 500) and its workers ride it out.

A real server on PostgreSQL connects as a role of its own, so the test can do to it what
operators and incidents do: revoke its privileges (before its workers start, and mid-sweep),
set the database read-only, terminate its connections; on SQLite, fill its disk. Meanwhile a
prober submits, pauses, resumes, reads, lists and asks for liveness and readiness every half
second and records every answer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from sweep.client import SweepClient
from sweep.service import db as service_db
from sweep.service import workers
from sweep.service.api.deps import Transaction
from sweep.service.app import create_app
from sweep.service.config import Settings
from sweep.service.schemas import WorkerRegister
from sweep.service.tables import Worker
from sweep.service.tokens import create_in_database
from tests.conftest import PG_ADMIN
from tests.helpers import (
    API,
    assert_metrics_intact,
    authorize,
    budget,
    make_spec,
    quick_spec,
    wait_for_end,
    wait_until,
)
from tests.processes import serve, start_worker, stop_workers

pytestmark = pytest.mark.processes  # real server, worker or pool processes

N_TRIALS = 14
OUTAGE = 3.0  # seconds each fault lasts


class Database:
    """The test's database and the role the server uses, driven as their superuser."""

    def __init__(self, url: str) -> None:
        self.name = url.rsplit("/", 1)[1]
        self.role = f"sweep_app_{secrets.token_hex(4)}"
        self.admin = psycopg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{self.name}", autocommit=True)
        self.admin.execute(f'CREATE ROLE "{self.role}" LOGIN')
        self.admin.execute(f'GRANT ALL ON SCHEMA public TO "{self.role}"')
        base = url.rsplit("/", 1)[0].replace("postgresql+psycopg://postgres@", "")
        self.url = f"postgresql+psycopg://{self.role}@{base}/{self.name}"

    def revoke(self) -> None:
        for kind in ("TABLES", "SEQUENCES"):
            self.admin.execute(f'REVOKE ALL ON ALL {kind} IN SCHEMA public FROM "{self.role}"')

    def grant(self) -> None:
        for kind in ("TABLES", "SEQUENCES"):
            self.admin.execute(f'GRANT ALL ON ALL {kind} IN SCHEMA public TO "{self.role}"')

    def read_only(self, on: bool) -> None:
        """New sessions start read-only (or not); the server's open ones are ended so that
        its pool opens new ones."""
        setting = (
            "SET default_transaction_read_only = on"
            if on
            else "RESET default_transaction_read_only"
        )
        self.admin.execute(f'ALTER DATABASE "{self.name}" {setting}')
        self.terminate()

    def terminate(self) -> None:
        self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
            (self.role,),
        )

    def close(self) -> None:
        self.terminate()
        self.admin.execute(f'ALTER DATABASE "{self.name}" RESET default_transaction_read_only')
        self.admin.execute(f'REASSIGN OWNED BY "{self.role}" TO postgres')
        self.admin.execute(f'DROP OWNED BY "{self.role}"')
        self.admin.execute(f'DROP ROLE "{self.role}"')
        self.admin.close()


@pytest.fixture
def database(postgresql_url: str) -> Iterator[Database]:
    db = Database(postgresql_url)
    try:
        yield db
    finally:
        db.close()


class Prober(threading.Thread):
    """Submit, pause, resume, read and list every half second; every answer is kept with the
    fault it came during."""

    def __init__(self, url: str, token: str, experiment_id: int, paused: int) -> None:
        super().__init__(daemon=True)
        self.http = httpx.Client(
            base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=20
        )
        self.experiment_id, self.paused = experiment_id, paused
        self.fault = "none"
        self.answers: list[tuple[str, str, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        probe = quick_spec(name="probe", project="probe", budget=budget(1))
        calls = [
            ("submit", lambda: self.http.post("/experiments", json=probe)),
            ("pause", lambda: self.http.post(f"/experiments/{self.paused}/pause")),
            ("resume", lambda: self.http.post(f"/experiments/{self.paused}/resume")),
            ("read", lambda: self.http.get(f"/experiments/{self.experiment_id}")),
            ("list", lambda: self.http.get("/experiments")),
            ("alive", lambda: self.http.get("/healthz")),
            ("ready", lambda: self.http.get("/readyz")),
        ]
        while not self.done.is_set():
            for name, call in calls:
                fault = self.fault
                self.answers.append((fault, name, call().status_code))
            self.done.wait(0.5)
        self.http.close()

    def during(self, fault: str) -> dict[str, list[int]]:
        seen: dict[str, list[int]] = {}
        for when, name, status in self.answers:
            if when == fault:
                seen.setdefault(name, []).append(status)
        return seen


def progress(client: SweepClient, experiment_id: int) -> int:
    """Epochs stored so far, over every trial."""
    return sum(t["last_epoch"] for t in client.all_trials(experiment_id))


@pytest.mark.postgres
@pytest.mark.timeout(400)
def test_database_faults_answer_503_and_the_sweep_finishes(
    database: Database, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server, client = serve(request, database.url, tmp_path / "logs")
    spec = make_spec(
        search_space={"dropout": {"type": "float", "low": 0.0, "high": 0.2}},
        fixed={"epochs": 8},
        pruner={"name": "none"},
        budget=budget(N_TRIALS, 2),
    )
    experiment_id = client.submit(spec)["id"]
    paused = client.submit(quick_spec(name="paused", project="probe", budget=budget(1)))["id"]
    settings = Settings(database_url=database.url)
    workers_token = create_in_database(role="worker", project="default", settings=settings)
    prober = Prober(server.url, server.admin_token, experiment_id, paused)
    workers: list[Any] = []
    recovery: dict[str, float] = {}

    def fault(name: str, start: Any, end: Any) -> None:
        """`start` the fault, keep it OUTAGE seconds, `end` it; then time the sweep's first
        stored epoch after it."""
        before = progress(client, experiment_id)
        prober.fault = name
        start()
        time.sleep(OUTAGE)  # the outage itself, not a wait for a state
        assert all(w.poll() is None for w in workers), f"a worker exited during {name}"
        end()
        ended = time.monotonic()
        prober.fault = "none"
        wait_until(lambda: progress(client, experiment_id) > before, 60, f"progress after {name}")
        recovery[name] = time.monotonic() - ended

    prober.start()
    try:
        # Revoked before the workers start: they keep trying to register.
        env = {"SWEEP_TOKEN": workers_token}

        def start_workers() -> None:
            database.revoke()
            for i in range(2):
                workers.append(
                    start_worker(
                        server, tmp_path / "logs", f"w{i}", "--exit-when-idle", "10", env=env
                    )
                )

        fault("revoked before workers start", start_workers, database.grant)
        fault("read-only", lambda: database.read_only(True), lambda: database.read_only(False))
        fault("revoked mid-sweep", database.revoke, database.grant)
        fault("connections terminated", database.terminate, lambda: None)
        ended = wait_for_end(client, experiment_id, timeout=240)
        assert all(w.poll() is None or w.returncode == 0 for w in workers)
    finally:
        prober.done.set()
        prober.join(timeout=30)
        stop_workers(workers)

    assert ended["state"] == "completed" and ended["trials_created"] == N_TRIALS
    assert sum(ended["counts"][s] for s in ("completed", "pruned")) == N_TRIALS
    assert_metrics_intact(client, experiment_id)
    assert all(w.returncode == 0 for w in workers)  # they rode out every fault and ended idle
    statuses = {status for _, _, status in prober.answers}
    assert all(s < 500 or s == 503 for s in statuses), sorted(statuses)
    for name in ("read-only", "revoked mid-sweep"):
        seen = prober.during(name)
        assert 503 in seen["submit"], (name, seen)  # the fault was real, and said so
    assert set(prober.during("read-only")["read"]) == {200}  # reads go on
    for name in ("read-only", "revoked mid-sweep"):  # alive, and out of a load balancer
        assert set(prober.during(name)["alive"]) == {200}
        assert 503 in prober.during(name)["ready"]
    assert prober.during("none")["ready"][-1] == 200
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("server-*.log"))
    assert "unhandled error" not in logs and "Traceback" not in logs
    print(
        "\nanswers per fault (status: count): "
        + "; ".join(
            f"{name}: "
            + ", ".join(
                f"{op} {dict(sorted((s, codes.count(s)) for s in set(codes)))}"
                for op, codes in prober.during(name).items()
            )
            for name in recovery
        )
        + "\nseconds from each fault's end to the next stored epoch: "
        + ", ".join(f"{name} {seconds:.1f}" for name, seconds in recovery.items())
        + f" (median {statistics.median(recovery.values()):.1f})"
    )


@pytest.mark.postgres
def test_a_request_that_loses_a_deadlock_runs_again_and_succeeds(
    postgresql_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A completion locks its trial, then its experiment; another transaction holding the
    experiment then asks for the trial: a deadlock, which PostgreSQL breaks by aborting the
    completion (its wait is shorter). The server runs the completion again and the worker
    sees it succeed, never the deadlock."""
    name = postgresql_url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:  # the server's sessions, not ours
        admin.execute(f"ALTER DATABASE \"{name}\" SET deadlock_timeout = '200ms'")
    server, client = serve(request, postgresql_url, tmp_path / "logs")
    experiment_id = client.submit(quick_spec(budget=budget(1)))["id"]
    as_worker = {"Authorization": f"Bearer {server.worker_token}"}
    with httpx.Client(base_url=f"{server.url}/api/v1", headers=as_worker, timeout=60) as worker:
        worker_id = worker.post("/workers", json={"name": "w"}).json()["id"]
        trial = worker.post(f"/workers/{worker_id}/claim", json={"wait_seconds": 5}).json()
        attempt = {"X-Attempt-Token": trial["token"]}
        url = f"/trials/{trial['trial_id']}"
        report = {"epoch": 1, "metrics": {"val_accuracy": 0.5}}
        assert worker.post(f"{url}/reports", json=report, headers=attempt).status_code == 200

        dsn = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
        with psycopg.connect(dsn) as other, psycopg.connect(dsn, autocommit=True) as watcher:
            other.execute("SET deadlock_timeout = '10s'")  # so the completion is the victim
            other.execute(
                "SELECT id FROM sweep_experiments WHERE id = %s FOR UPDATE", (experiment_id,)
            )
            answers: list[httpx.Response] = []
            completing = threading.Thread(
                target=lambda: answers.append(
                    worker.post(f"{url}/complete", json={"value": 0.5}, headers=attempt)
                )
            )
            completing.start()
            waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted"  # a row lock's wait
            # The completion looks for a deadlock once, 200 ms into its wait: this one must
            # be waiting too by then, or it is the one aborted, 10 s later. Look often.
            wait_until(
                lambda: watcher.execute(waiting).fetchone()[0],  # type: ignore[index]
                30,
                "the completion to wait for the experiment",
                poll=0.01,
            )
            other.execute(
                "SELECT id FROM sweep_trials WHERE id = %s FOR UPDATE", (trial["trial_id"],)
            )
            other.rollback()
            completing.join(timeout=60)
    assert [a.status_code for a in answers] == [200], [a.text for a in answers]
    assert client.trial(trial["trial_id"])["state"] == "completed"
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("server-*.log"))
    assert "database unavailable: deadlock detected" in logs  # it happened, and was run again


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB filesystem of its own (tmpfs) for the server's SQLite file, to fill."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        message = f"cannot mount a small filesystem here: {mounted.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.timeout(300)
def test_a_full_disk_under_sqlite_answers_503_and_the_sweep_finishes(
    small_disk: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # The artifact store stays on the big disk: this is about the database's.
    env = {"SWEEP_DATA_DIR": str(tmp_path / "data")}
    server, client = serve(request, f"sqlite:///{small_disk / 'sweep.db'}", tmp_path / "logs", env)
    spec = make_spec(
        search_space={"dropout": {"type": "float", "low": 0.0, "high": 0.2}},
        fixed={"epochs": 8},
        pruner={"name": "none"},
        budget=budget(6, 1),
    )
    experiment_id = client.submit(spec)["id"]
    paused = client.submit(quick_spec(name="paused", project="probe", budget=budget(1)))["id"]
    settings = Settings(database_url=f"sqlite:///{small_disk / 'sweep.db'}")
    token = create_in_database(role="worker", project="default", settings=settings)
    worker = start_worker(
        server, tmp_path / "logs", "w", "--exit-when-idle", "10", env={"SWEEP_TOKEN": token}
    )
    prober = Prober(server.url, server.admin_token, experiment_id, paused)
    prober.start()
    try:
        wait_until(lambda: progress(client, experiment_id) >= 2, 60, "the sweep to start")
        before = progress(client, experiment_id)
        prober.fault = "disk full"
        filler = small_disk / "filler"
        # Unbuffered: a buffered file would try its last block again on close, and fail there.
        with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:  # until the filesystem says it is full
                f.write(bytes(1 << 16))
        time.sleep(OUTAGE)  # the outage itself, not a wait for a state
        assert worker.poll() is None, "the worker exited while the disk was full"
        filler.unlink()
        freed = time.monotonic()
        prober.fault = "none"
        wait_until(lambda: progress(client, experiment_id) > before, 60, "progress")
        moving = time.monotonic() - freed
        ended = wait_for_end(client, experiment_id, timeout=240)
    finally:
        prober.done.set()
        prober.join(timeout=30)
        stop_workers([worker])
    assert ended["state"] == "completed" and ended["trials_created"] == 6
    assert_metrics_intact(client, experiment_id)
    assert worker.returncode == 0
    statuses = {status for _, _, status in prober.answers}
    assert all(s < 500 or s == 503 for s in statuses), sorted(statuses)
    seen = prober.during("disk full")
    assert 503 in seen["submit"] and 503 in seen["ready"] and set(seen["alive"]) == {200}
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("server-*.log"))
    assert "database or disk is full" in logs and "Traceback" not in logs
    print(
        "\ndisk full: "
        + ", ".join(
            f"{op} {dict(sorted((s, codes.count(s)) for s in set(codes)))}"
            for op, codes in seen.items()
        )
        + f"; the sweep stored its next epoch {moving:.1f} s after the disk was freed"
    )


@pytest.mark.postgres
def test_a_pooled_connection_is_pinged_only_after_sitting_idle(
    postgresql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection in steady use is not pinged before each transaction: one whose backend
    was ended fails its next transaction (over HTTP a write's 503; a read runs again), and
    the pool then replaces its
    connections. One that sat idle past PING_AFTER_IDLE_SECONDS is pinged when taken from
    the pool, and replaced unseen."""
    database = service_db.Database.connect(postgresql_url)

    def backend() -> int:
        with database.transaction() as session:
            return int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())

    def end(pid: int) -> None:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        gone = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s"
        wait_until(lambda: admin.execute(gone, (pid,)).fetchone() == (0,), 10, "backend ended")

    try:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            first = backend()
            end(first)
            with pytest.raises(DBAPIError) as failed:
                backend()
            assert failed.value.connection_invalidated
            second = backend()
            assert second != first

            monkeypatch.setattr(service_db, "PING_AFTER_IDLE_SECONDS", 0.0)
            end(second)
            assert backend() not in (first, second)
    finally:
        database.dispose()


@pytest.mark.postgres
def test_a_read_on_a_connection_ended_in_steady_use_runs_again(
    database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A read whose pooled connection's backend was ended (in steady use, so not pinged
    first) fails on it, and is run again on a new one: its caller gets its answer."""
    settings = Settings(database_url=database.url, data_dir=tmp_path)
    with TestClient(create_app(settings)) as client:
        authorize(client)
        assert client.get(f"{API}/experiments").status_code == 200
        database.terminate()
        ended = "SELECT count(*) FROM pg_stat_activity WHERE usename = %s"
        wait_until(
            lambda: database.admin.execute(ended, (database.role,)).fetchone() == (0,),
            10,
            "the backends to end",
        )
        caplog.clear()
        assert client.get(f"{API}/experiments").status_code == 200
    assert "database unavailable" in caplog.text  # the first try met the ended backend


@pytest.mark.postgres
def test_connections_a_burst_opened_are_kept_for_the_next(postgresql_url: str) -> None:
    """A busy process holds most of its pool at once: the connections a burst of concurrent
    transactions opened stay open for the next burst, rather than being closed as they go
    back to the pool and opened again (a new PostgreSQL backend each)."""
    database = service_db.Database.connect(postgresql_url)
    width = service_db.POOL_SIZE + service_db.POOL_OVERFLOW - 5

    def burst() -> set[int]:
        """The backends that served `width` transactions open at once."""
        together = threading.Barrier(width)
        backends: set[int] = set()

        def transaction() -> None:
            with database.transaction() as session:
                backends.add(session.execute(text("SELECT pg_backend_pid()")).scalar_one())
                together.wait(timeout=30)  # every connection checked out at once

        threads = [threading.Thread(target=transaction) for _ in range(width)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(backends) == width
        return backends

    try:
        assert burst() == burst()
    finally:
        database.dispose()


def test_a_cancelled_call_keeps_its_turn_until_its_transaction_has_ended(sqlite_url: str) -> None:
    """A worker that hangs up cancels its call while the call's transaction runs in its
    thread. The transaction goes on and commits, and the call's turn is given back only then:
    otherwise the turns would no longer bound the transactions open, and with them the
    connections a process needs."""
    db = service_db.Database.connect(sqlite_url)
    db.migrate()
    started, go_on = threading.Event(), threading.Event()

    def work(session: Session) -> None:
        started.set()
        assert go_on.wait(30)
        workers.register(session, body=WorkerRegister(name="hung-up"), project=None)

    async def hang_up() -> None:
        turns = anyio.CapacityLimiter(1)
        with ThreadPoolExecutor(1) as threads:
            call = asyncio.ensure_future(Transaction(db, turns, threads).run(work))
            assert await asyncio.to_thread(started.wait, 30)
            call.cancel()
            for _ in range(5):  # the event loop's turns, for the cancellation to reach it
                await asyncio.sleep(0)
            assert not call.done() and turns.borrowed_tokens == 1
            go_on.set()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert turns.borrowed_tokens == 0

    try:
        asyncio.run(hang_up())
        with db.transaction(write=False) as session:
            assert session.scalars(select(Worker.name)).all() == ["hung-up"]
    finally:
        db.dispose()
