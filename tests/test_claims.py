"""Waiting claims share one watcher per API process: they are answered together when work
appears, woken across API processes by PostgreSQL NOTIFY, refused when their experiment is
cancelled, and let go when their worker hangs up."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from sweep.service.claims import ALONE
from tests.helpers import budget, make_spec, scrape, value, wait_until
from tests.processes import ServerProcess, serve

pytestmark = pytest.mark.processes  # real API processes

# Longer than any claim below waits: only a wake-up, never the periodic look, answers them.
NO_POLL = {"SWEEP_CLAIM_POLL_SECONDS": "120"}
EVERY_SECOND = {"SWEEP_CLAIM_POLL_SECONDS": "1"}
CHECK_SECONDS = 0.5
SLOW_CHECKS = EVERY_SECOND | {"SWEEP_CLAIM_CHECK_SECONDS": str(CHECK_SECONDS)}


def metric(server: ServerProcess, name: str) -> float:
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    text = httpx.get(f"{server.url}/metrics", headers=headers, timeout=10).text
    return value(scrape(text), name)


def waiting(server: ServerProcess) -> float:
    return metric(server, "sweep_claims_waiting")


def looks(server: ServerProcess) -> float:
    """Claims that looked at the database on their own (the others joined the watcher)."""
    return metric(server, "sweep_claim_seconds_count")


def worker_http(server: ServerProcess, request: pytest.FixtureRequest) -> httpx.Client:
    """A client speaking as a worker, closed when the test ends."""
    http = httpx.Client(
        base_url=f"{server.url}/api/v1",
        headers={"Authorization": f"Bearer {server.worker_token}"},
        timeout=60,
    )
    request.addfinalizer(http.close)
    return http


class Claims:
    """Claims sent from threads, each by a worker of its own; their answers, by worker."""

    def __init__(self, server: ServerProcess, n: int, wait_seconds: float) -> None:
        self.http = httpx.Client(
            base_url=f"{server.url}/api/v1",
            headers={"Authorization": f"Bearer {server.worker_token}"},
            timeout=wait_seconds + 30,
        )
        self.workers = [
            self.http.post("/workers", json={"name": f"w{i}"}).json()["id"] for i in range(n)
        ]
        self.answers: dict[int, httpx.Response] = {}
        self.wait_seconds = wait_seconds
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def send(self, worker_id: int, **body: Any) -> None:
        def run() -> None:
            response = self.http.post(
                f"/workers/{worker_id}/claim", json={"wait_seconds": self.wait_seconds, **body}
            )
            with self._lock:
                self.answers[worker_id] = response

        thread = threading.Thread(target=run)
        thread.start()
        self._threads.append(thread)

    def trials(self) -> dict[int, dict[str, Any]]:
        with self._lock:
            return {w: r.json() for w, r in self.answers.items() if r.status_code == 200}

    def join(self) -> None:
        for thread in self._threads:
            thread.join()
        self.http.close()


@pytest.mark.timeout(120)
def test_waiting_claims_start_together_and_as_slots_free(
    db_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server, client = serve(request, db_url, tmp_path / "logs", env=NO_POLL)
    claims = Claims(server, 12, wait_seconds=20)
    for worker_id in claims.workers:
        claims.send(worker_id)
    wait_until(lambda: waiting(server) == 12, 30, "12 claims waiting")

    experiment_id = client.submit(make_spec(budget=budget(10, max_concurrent=8)))["id"]
    started = wait_until(lambda: len(claims.trials()) == 8 and claims.trials(), 30, "8 trials")
    assert sorted(t["number"] for t in started.values()) == list(range(8))
    assert waiting(server) == 4  # the cap holds: the others wait on

    # Each trial that ends frees a slot: one more waiting claim gets a trial, until the
    # budget's 10 are out.
    for done, trial in enumerate(list(started.values())[:3], start=1):
        claims.http.post(
            f"/trials/{trial['trial_id']}/complete",
            json={"value": 0.5},
            headers={"X-Attempt-Token": trial["token"]},
        ).raise_for_status()
        expected = min(8 + done, 10)
        wait_until(lambda n=expected: len(claims.trials()) == n, 30, f"{expected} trials")
    # The budget is out: the last two wait on, and start the trials of the next submission.
    assert waiting(server) == 2
    numbers = sorted(t["number"] for t in claims.trials().values())
    assert numbers == list(range(10))
    assert client.trials(experiment_id)["total"] == 10
    next_id = client.submit(make_spec(budget=budget(2)))["id"]
    claims.join()
    assert [r.status_code for r in claims.answers.values()] == [200] * 12
    by_experiment = sorted(t["experiment_id"] for t in claims.trials().values())
    assert by_experiment == [experiment_id] * 10 + [next_id] * 2


@pytest.mark.timeout(120)
def test_a_commit_in_another_api_process_wakes_waiting_claims(
    postgresql_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    waiting_on, _ = serve(request, postgresql_url, tmp_path / "a", env=NO_POLL)
    _, submitting = serve(request, postgresql_url, tmp_path / "b", env=NO_POLL)
    claims = Claims(waiting_on, 3, wait_seconds=30)
    for worker_id in claims.workers:
        claims.send(worker_id)
    wait_until(lambda: waiting(waiting_on) == 3, 30, "3 claims waiting")

    submitting.submit(make_spec(budget=budget(3, max_concurrent=3)))
    claims.join()
    assert [r.status_code for r in claims.answers.values()] == [200] * 3
    assert sorted(t["number"] for t in claims.trials().values()) == [0, 1, 2]


def lock_waits(observer: psycopg.Connection[Any]) -> int:
    """Transactions of the test database waiting for a lock (a row's, here)."""
    row = observer.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
    assert row is not None
    return int(row[0])


def dsn(postgresql_url: str) -> str:
    return postgresql_url.replace("postgresql+psycopg://", "postgresql://")


@pytest.mark.timeout(120)
def test_claims_beyond_those_trying_on_their_own_join_the_watcher(
    postgresql_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A burst of claims (a thousand long polls running out together) starts in the
    watcher's batches: once claims.ALONE of them try on their own, the rest join it."""
    server, client = serve(request, postgresql_url, tmp_path / "logs", env=NO_POLL)
    experiment_id = client.submit(make_spec(budget=budget(12, max_concurrent=12)))["id"]
    claims = Claims(server, 12, wait_seconds=30)
    with (
        psycopg.connect(dsn(postgresql_url)) as holder,
        psycopg.connect(dsn(postgresql_url), autocommit=True) as observer,
    ):
        # The experiment's row held: claims that try on their own wait for it.
        holder.execute(
            "SELECT id FROM sweep_experiments WHERE id = %s FOR UPDATE", (experiment_id,)
        )
        for worker_id in claims.workers[:ALONE]:
            claims.send(worker_id)
        wait_until(lambda: lock_waits(observer) == ALONE, 30, f"{ALONE} claims on the row")
        for worker_id in claims.workers[ALONE:]:
            claims.send(worker_id)
        wait_until(lambda: waiting(server) == 12 - ALONE, 30, "the others waiting")
        holder.rollback()
    claims.join()
    assert sorted(t["number"] for t in claims.trials().values()) == list(range(12))
    assert looks(server) == ALONE  # the other claims looked at nothing on their own


@pytest.mark.timeout(120)
def test_a_claim_whose_trial_is_starting_as_its_wait_runs_out_gets_that_trial(
    postgresql_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server, client = serve(request, postgresql_url, tmp_path / "logs", env=NO_POLL)
    claims = Claims(server, 1, wait_seconds=6)
    (worker_id,) = claims.workers
    sent = time.monotonic()
    claims.send(worker_id)
    wait_until(lambda: waiting(server) == 1, 30, "the claim waiting")
    with (
        psycopg.connect(dsn(postgresql_url)) as holder,
        psycopg.connect(dsn(postgresql_url), autocommit=True) as observer,
    ):
        # The worker's row held: the round that starts its trial waits for it.
        holder.execute("SELECT id FROM sweep_workers WHERE id = %s FOR UPDATE", (worker_id,))
        experiment_id = client.submit(make_spec(budget=budget(1)))["id"]
        wait_until(lambda: lock_waits(observer) == 1, 30, "the round on the worker's row")
        assert time.monotonic() < sent + claims.wait_seconds, "the claim's wait ran out first"
        over = sent + claims.wait_seconds + 1
        wait_until(lambda: time.monotonic() > over, 30, "the claim's wait over")
        assert worker_id not in claims.answers  # it waits for its trial
        holder.rollback()
    claims.join()
    answer = claims.answers[worker_id]
    assert answer.status_code == 200, answer.text
    assert answer.elapsed.total_seconds() > claims.wait_seconds
    (trial,) = client.trials(experiment_id)["items"]
    assert (trial["id"], trial["state"]) == (answer.json()["trial_id"], "running")


@pytest.mark.timeout(120)
def test_a_waiting_claim_for_an_experiment_cancelled_meanwhile_is_refused(
    sqlite_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server, client = serve(request, sqlite_url, tmp_path / "logs")
    experiment_id = client.submit(make_spec(budget=budget(4, max_concurrent=1)))["id"]
    claims = Claims(server, 2, wait_seconds=30)
    for worker_id in claims.workers:
        claims.send(worker_id, experiment_id=experiment_id)
    wait_until(lambda: len(claims.trials()) == 1 and waiting(server) == 1, 30, "one waits")

    client.cancel(experiment_id)
    claims.join()
    refused = [r for r in claims.answers.values() if r.status_code != 200]
    assert [r.status_code for r in refused] == [409]
    assert "cancelled" in refused[0].json()["error"]["message"]


@pytest.mark.timeout(120)
def test_a_worker_that_hangs_up_stops_waiting(
    sqlite_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server, _ = serve(request, sqlite_url, tmp_path / "logs", env=NO_POLL)
    registered = Claims(server, 1, wait_seconds=30)
    registered.join()
    worker_id = registered.workers[0]
    body = json.dumps({"wait_seconds": 30}).encode()
    head = (
        f"POST /api/v1/workers/{worker_id}/claim HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {server.worker_token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port)) as connection:
        connection.sendall(head.encode() + body)
        wait_until(lambda: waiting(server) == 1, 30, "the claim waiting")
    wait_until(lambda: waiting(server) == 0, 20, "the claim let go once its worker hung up")


@pytest.mark.timeout(120)
def test_claims_that_join_a_quiet_watcher_unchecked_are_checked_by_its_next_round(
    sqlite_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server, client = serve(request, sqlite_url, tmp_path / "logs", env=EVERY_SECOND)
    client.submit(make_spec(budget=budget(1, max_concurrent=1)))
    holder = Claims(server, 1, wait_seconds=5)
    holder.send(holder.workers[0])
    holder.join()
    (held,) = holder.trials().values()
    # Another worker waits. The watcher's next round finds no open experiment: it is quiet
    # from then on.
    idle = Claims(server, 1, wait_seconds=60)
    idle.send(idle.workers[0])
    wait_until(lambda: waiting(server) == 1, 30, "a claim waiting")
    http = worker_http(server, request)

    def claim_again() -> bool:
        """The holder's answer was lost, so it claims again: it gets its attempt back
        rather than waiting for nothing. True when the claim did not look at the database
        on its own."""
        looked = looks(server)
        again = http.post(f"/workers/{holder.workers[0]}/claim", json={"wait_seconds": 50})
        assert again.status_code == 200
        assert (again.json()["trial_id"], again.json()["token"]) == (
            held["trial_id"],
            held["token"],
        )
        assert again.elapsed.total_seconds() < 25
        return looks(server) == looked

    wait_until(claim_again, 30, "a claim answered by the watcher's check")
    looked = looks(server)
    unknown = http.post("/workers/999999/claim", json={"wait_seconds": 50})
    assert unknown.status_code == 404
    assert unknown.elapsed.total_seconds() < 25
    assert looks(server) == looked
    assert waiting(server) == 1  # the idle worker waits on, unanswered


@pytest.mark.timeout(120)
def test_a_check_that_falls_due_after_its_claim_left_changes_nothing(
    sqlite_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server, _ = serve(request, sqlite_url, tmp_path / "logs", env=SLOW_CHECKS)
    registered = Claims(server, 1, wait_seconds=1)
    registered.join()
    (worker_id,) = registered.workers
    http = worker_http(server, request)

    def unchecked() -> bool:
        """A claim that found the watcher quiet: it did not look on its own."""
        looked = looks(server)
        long_enough = {"wait_seconds": 5 * CHECK_SECONDS}  # claims.UNCHECKED_WAITS checks
        assert http.post(f"/workers/{worker_id}/claim", json=long_enough).status_code == 204
        return looks(server) == looked

    wait_until(unchecked, 30, "the watcher quiet")
    # A claim joins unchecked; a newer, short claim of the same worker replaces it and is
    # over before the first one's check falls due, CHECK_SECONDS after it joined.
    first = Claims(server, 0, wait_seconds=30)
    first.send(worker_id)
    wait_until(lambda: waiting(server) == 1, 20, "the first claim waiting")
    replaced = http.post(f"/workers/{worker_id}/claim", json={"wait_seconds": 0.05})
    assert replaced.status_code == 204
    first.join()
    assert first.answers[worker_id].status_code == 204  # answered by the newer claim
    # The check falls due with no claim left to check: the server answers on through it.
    until = time.monotonic() + 5 * CHECK_SECONDS
    while time.monotonic() < until:
        assert http.get("/healthz", timeout=10).status_code == 200
        assert http.post(f"/workers/{worker_id}/claim", json={"wait_seconds": 0}).status_code == 204
