"""Leases, attempts and fencing: a trial never stays running after its worker is gone."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sweep.client import SweepClient
from sweep.service.app import create_app
from sweep.service.config import Settings
from tests.helpers import (
    authorize,
    budget,
    call,
    checksum,
    claim,
    claim_trial,
    make_spec,
    register,
)
from tests.processes import ServerProcess, start_worker, stop_workers

API = "/api/v1"
LEASE = 0.6


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    short = settings.model_copy(update={"lease_seconds": LEASE, "lease_check_seconds": 0.1})
    with TestClient(create_app(short)) as test_client:
        yield authorize(test_client)


def start(client: TestClient, max_retries: int = 3, n_trials: int = 1) -> int:
    spec = make_spec(budget={**budget(n_trials, 2), "max_retries": max_retries})
    return int(client.post(f"{API}/experiments", json=spec).json()["id"])


def wait_for_state(client: TestClient, trial_id: int, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        trial = client.get(f"{API}/trials/{trial_id}").json()
        if trial["state"] == state:
            return dict(trial)
        time.sleep(0.05)
    raise AssertionError(f"trial {trial_id} never became {state}: {trial}")


def test_an_expired_lease_hands_the_same_trial_out_again_and_fences_the_old_attempt(
    client: TestClient,
) -> None:
    start(client)
    first = claim_trial(client, "a")
    assert call(client, first, "reports", epoch=1, metrics={"val_accuracy": 0.5}).status_code == 200
    queued = wait_for_state(client, first["trial_id"], "queued")  # worker a went silent
    assert queued["retries"] == 1

    second = claim_trial(client, "b")
    assert (second["trial_id"], second["number"], second["params"]) == (
        first["trial_id"],
        first["number"],
        first["params"],
    )
    assert (second["attempt"], first["attempt"]) == (2, 1)
    assert second["token"] != first["token"]
    before = client.get(f"{API}/trials/{first['trial_id']}").json()
    assert before["metrics"] == []  # the new attempt starts its curve afresh

    for action, body in (
        ("reports", {"epoch": 1, "metrics": {"val_accuracy": 0.9}}),
        ("heartbeat", {}),
        ("complete", {"value": 0.9}),
        ("fail", {"reason": "error"}),
        ("release", {}),
    ):
        assert call(client, first, action, **body).status_code == 409, action
    assert client.get(f"{API}/trials/{first['trial_id']}").json() == before

    assert (
        call(client, second, "reports", epoch=1, metrics={"val_accuracy": 0.8}).status_code == 200
    )
    assert call(client, second, "complete", value=0.8).status_code == 200


def test_a_trial_lost_while_its_worker_finished_it_holds_a_slot_again_when_restarted(
    client: TestClient,
) -> None:
    start(client)
    a, b = register(client, "a"), register(client, "b")
    first = claim_trial(client, a)
    # Its worker said its training ended (no trial is left to hand it), then went silent.
    assert claim(client, a, finishing=[first["trial_id"]]) is None
    wait_for_state(client, first["trial_id"], "queued")
    second = claim_trial(client, b)
    assert (second["trial_id"], second["attempt"]) == (first["trial_id"], 2)
    # The new attempt trains: its worker asking again gets it back.
    again = claim_trial(client, b)
    assert (again["trial_id"], again["token"]) == (second["trial_id"], second["token"])


def test_heartbeats_keep_the_lease(client: TestClient) -> None:
    start(client)
    trial = claim_trial(client, "a")
    for _ in range(int(3 * LEASE / 0.15)):
        assert call(client, trial, "heartbeat").json() == {"action": "continue", "reason": None}
        time.sleep(0.15)
    detail = client.get(f"{API}/trials/{trial['trial_id']}").json()
    assert (detail["state"], detail["attempt"], detail["retries"]) == ("running", 1, 0)


def test_a_trial_lost_too_often_fails_as_lost(client: TestClient) -> None:
    experiment_id = start(client, max_retries=1)
    first = claim_trial(client, "a")
    wait_for_state(client, first["trial_id"], "queued")
    claim_trial(client, "b")
    lost = wait_for_state(client, first["trial_id"], "failed")
    assert (lost["failure_reason"], lost["attempt"], lost["retries"]) == ("lost", 2, 1)
    ended = client.get(f"{API}/experiments/{experiment_id}").json()
    assert (ended["state"], ended["stop_reason"]) == ("failed", "its only trial failed: lost")


def test_release_requeues_at_once_without_counting_a_retry(client: TestClient) -> None:
    start(client, max_retries=0)
    first = claim_trial(client, "a")
    released = call(client, first, "release").json()
    assert (released["state"], released["retries"]) == ("queued", 0)
    second = claim_trial(client, "b")
    assert (second["trial_id"], second["attempt"]) == (first["trial_id"], 2)


def test_cancel_ends_queued_trials(client: TestClient) -> None:
    experiment_id = start(client, n_trials=2)
    first, second = claim_trial(client, "a"), claim_trial(client, "b")
    call(client, first, "release")
    client.post(f"{API}/experiments/{experiment_id}/cancel")
    assert client.get(f"{API}/trials/{first['trial_id']}").json()["state"] == "cancelled"
    assert call(client, second, "heartbeat").json()["action"] == "stop"


@pytest.mark.processes
@pytest.mark.timeout(240)
def test_a_killed_worker_trial_is_finished_by_another(sqlite_url: str, tmp_path: Path) -> None:
    server = ServerProcess(
        sqlite_url,
        tmp_path / "logs",
        env={"SWEEP_LEASE_SECONDS": "2", "SWEEP_LEASE_CHECK_SECONDS": "0.5"},
    )
    server.start()
    workers = []
    try:
        with SweepClient(server.url, token=server.admin_token) as client:
            spec = make_spec(fixed={"epochs": 30}, budget=budget(4, 2))
            experiment_id = client.submit(spec)["id"]
            workers = [start_worker(server, tmp_path / "logs", f"w{i}") for i in range(2)]
            deadline = time.monotonic() + 60
            while client.experiment(experiment_id)["counts"]["running"] < 2:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            workers[0].send_signal(signal.SIGKILL)  # mid-trial, no goodbye
            workers.append(start_worker(server, tmp_path / "logs", "replacement"))
            deadline = time.monotonic() + 180
            while (experiment := client.experiment(experiment_id))["state"] != "completed":
                assert time.monotonic() < deadline, experiment["counts"]
                time.sleep(0.5)
            trials = client.trials(experiment_id)["items"]
    finally:
        stop_workers(workers)
        server.stop()
    assert experiment["counts"]["running"] == experiment["counts"]["queued"] == 0
    assert sum(experiment["counts"].values()) == 4
    assert any(t["attempt"] == 2 and t["state"] == "completed" for t in trials)


def test_a_new_attempt_resumes_from_the_last_checkpoint(client: TestClient) -> None:
    start(client)
    first = claim_trial(client, "a")
    assert first["resume_epoch"] == 0
    for epoch in (1, 2, 3):
        call(client, first, "reports", epoch=epoch, metrics={"val_accuracy": epoch / 10})
    headers = {"X-Attempt-Token": first["token"]}
    url = f"{API}/trials/{first['trial_id']}/checkpoint"
    early = client.put(
        url, params={"epoch": 4}, content=b"too soon", headers={**headers, **checksum(b"too soon")}
    )
    assert early.status_code == 409  # epoch 4 was not reported yet
    state = {**headers, **checksum(b"state@2")}
    assert (
        client.put(url, params={"epoch": 2}, content=b"state@2", headers=state).status_code == 204
    )
    call(client, first, "release")

    second = claim_trial(client, "b")
    assert (second["attempt"], second["resume_epoch"]) == (2, 2)
    trial = client.get(f"{API}/trials/{first['trial_id']}").json()
    assert [m["epoch"] for m in trial["metrics"]] == [1, 2]  # epoch 3 is trained again
    assert (trial["last_epoch"], trial["resumed_from"]) == (2, 2)
    checkpoint = client.get(url, headers={"X-Attempt-Token": second["token"]})
    assert (checkpoint.content, checkpoint.headers["X-Checkpoint-Epoch"]) == (b"state@2", "2")
    assert client.get(url, headers=headers).status_code == 409  # the old attempt's token
    call(client, second, "reports", epoch=3, metrics={"val_accuracy": 0.5})
    call(client, second, "complete", value=0.5)
    assert client.get(url, headers={"X-Attempt-Token": second["token"]}).status_code == 409


@pytest.mark.processes
@pytest.mark.timeout(240)
def test_sigterm_checkpoints_and_gives_the_trial_back_to_resume_elsewhere(
    sqlite_url: str, tmp_path: Path
) -> None:
    server = ServerProcess(sqlite_url, tmp_path / "logs")
    server.start()
    workers = []
    try:
        with SweepClient(server.url, token=server.admin_token) as client:
            spec = make_spec(
                fixed={"epochs": 40, "checkpoint_every": 0},
                budget=budget(1, 1),
                pruner={"name": "none"},
            )
            experiment_id = client.submit(spec)["id"]
            workers.append(start_worker(server, tmp_path / "logs", "preempted"))
            deadline = time.monotonic() + 60
            while not (page := client.trials(experiment_id)["items"]) or (
                page[0]["last_epoch"] < 3
            ):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            workers[0].send_signal(signal.SIGTERM)  # what preemption sends
            assert workers[0].wait(timeout=60) == 0
            given_back = client.trial(page[0]["id"])
            assert (given_back["state"], given_back["failure_reason"]) == ("queued", "preempted")
            assert given_back["retries"] == 0
            checkpointed = given_back["last_epoch"]
            said = (tmp_path / "logs" / "preempted.log").read_text()
            assert f"gave trial {page[0]['id']} back at epoch {checkpointed} " in said
            assert "preempted exiting (told to stop)" in said

            workers.append(start_worker(server, tmp_path / "logs", "successor"))
            deadline = time.monotonic() + 180
            while client.experiment(experiment_id)["state"] != "completed":
                assert time.monotonic() < deadline
                time.sleep(0.3)
            trial = client.trial(page[0]["id"])
    finally:
        stop_workers(workers)
        server.stop()
    assert (trial["state"], trial["attempt"]) == ("completed", 2)
    assert [m["epoch"] for m in trial["metrics"]] == list(range(1, 41))
    log = (tmp_path / "logs" / "successor.log").read_text()
    assert f"from epoch {checkpointed + 1})" in log
