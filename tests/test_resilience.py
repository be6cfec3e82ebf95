"""Edges where workers, API processes and the database race each other."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from sweep.client import SweepClient
from sweep.service import rows
from sweep.service.app import create_app
from sweep.service.config import Settings
from tests.helpers import authorize, budget, call, checksum, claim, make_spec, wait_until
from tests.processes import ServerProcess, start_worker

API = "/api/v1"


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield authorize(test_client)


def test_a_locked_queued_trial_never_lets_a_claim_overshoot_the_budget(
    postgresql_url: str, tmp_path: Path
) -> None:
    settings = Settings(database_url=postgresql_url, data_dir=tmp_path)
    with TestClient(create_app(settings)) as client:
        authorize(client)
        client.post(f"{API}/experiments", json=make_spec(budget=budget(1, 2)))
        first = claim(client, "a")
        assert first is not None
        call(client, first, "release")
        plain_url = postgresql_url.replace("+psycopg", "")
        with psycopg.connect(plain_url) as other:  # e.g. the old worker's late report
            other.execute(
                "SELECT 1 FROM sweep_trials WHERE id = %s FOR UPDATE", (first["trial_id"],)
            )
            assert claim(client, "b") is None  # not a second trial past n_trials=1
        experiment = client.get(f"{API}/experiments").json()["items"][0]
        assert experiment["trials_created"] == 1
        again = claim(client, "c")
        assert again is not None and again["trial_id"] == first["trial_id"]


def test_a_trial_given_back_after_its_experiment_ended_ends_too(client: TestClient) -> None:
    experiment_id = client.post(f"{API}/experiments", json=make_spec(budget=budget(2, 2))).json()[
        "id"
    ]
    trial = claim(client, "a")
    assert trial is not None
    client.post(f"{API}/experiments/{experiment_id}/cancel")
    assert call(client, trial, "release").json()["state"] == "cancelled"
    counts = client.get(f"{API}/experiments/{experiment_id}").json()["counts"]
    assert counts["queued"] == counts["running"] == 0


def test_completing_at_an_epoch_never_reported_is_refused(client: TestClient) -> None:
    client.post(f"{API}/experiments", json=make_spec(budget=budget(1, 1)))
    trial = claim(client, "a")
    assert trial is not None
    call(client, trial, "reports", epoch=1, metrics={"val_accuracy": 0.5})
    assert call(client, trial, "complete", value=0.5, epoch=2).status_code == 409
    assert call(client, trial, "complete", value=0.5, epoch=1).status_code == 200


def test_another_process_rebuilds_its_study_when_a_trial_was_rewound(
    settings: Settings,
) -> None:
    # A pruner that reads the study at every report (and never prunes these curves).
    spec = make_spec(budget=budget(1, 1), pruner={"name": "threshold", "options": {"lower": 0.0}})
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        authorize(a), authorize(b)
        experiment_id = a.post(f"{API}/experiments", json=spec).json()["id"]
        first = claim(a, "w1")
        assert first is not None
        for epoch in (1, 2, 3):  # process a's study sees epochs 1-3
            call(a, first, "reports", epoch=epoch, metrics={"val_accuracy": 0.1 * epoch})
        headers = {"X-Attempt-Token": first["token"]}
        a.put(
            f"{API}/trials/{first['trial_id']}/checkpoint",
            params={"epoch": 1},
            content=b"state",
            headers={**headers, **checksum(b"state")},
        )
        call(a, first, "release")
        second = claim(b, "w2")  # process b resumes it after epoch 1
        assert second is not None and second["resume_epoch"] == 1
        answer = call(a, second, "reports", epoch=2, metrics={"val_accuracy": 0.9})
        assert answer.status_code == 200, answer.text
        app = a.app
        with app.state.db.transaction() as session:  # type: ignore[attr-defined]
            experiment = rows.experiment(session, experiment_id)
            [seen] = app.state.optimizer.history(session, experiment)  # type: ignore[attr-defined]
        assert seen.intermediate_values == {1: 0.1, 2: 0.9}


@pytest.mark.processes
@pytest.mark.timeout(120)
def test_an_idle_worker_stops_promptly_while_the_server_is_down(
    sqlite_url: str, tmp_path: Path
) -> None:
    server = ServerProcess(sqlite_url, tmp_path / "logs")
    server.start()
    worker = start_worker(server, tmp_path / "logs", "w")
    log = tmp_path / "logs" / "w.log"
    try:
        with SweepClient(server.url, token=server.admin_token) as client:
            wait_until(client.workers, 60, "the worker to register")  # and handle SIGTERM
        server.kill()
        wait_until(lambda: "failed" in log.read_text(), 60, "the worker to find the server gone")
        stopped = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        assert time.monotonic() - stopped < 15
    finally:
        if worker.poll() is None:
            worker.kill()
        server.stop()
