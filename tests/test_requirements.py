"""Workers get only the trials they can run; an experiment no live worker can run says why."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.helpers import authorize, budget, small, submit

API = "/api/v1"
SPACE = {"dropout": {"type": "float", "low": 0.0, "high": 0.3}}


def worker_on(client: TestClient, device: str, memory_gb: float | None = None) -> int:
    body = {"name": device, "device": device, "device_memory_gb": memory_gb}
    return int(client.post(f"{API}/workers", json=body).json()["id"])


def experiment_claimed(client: TestClient, worker: int) -> int | None:
    response = client.post(f"{API}/workers/{worker}/claim", json={})
    return None if response.status_code == 204 else int(response.json()["experiment_id"])


def test_claims_follow_device_and_memory_requirements(client: TestClient) -> None:
    big_gpu = submit(
        client,
        small(SPACE, budget=budget(1), requirements={"device": "cuda", "min_device_memory_gb": 40}),
    )
    any_gpu = submit(client, small(SPACE, budget=budget(1), requirements={"device": "cuda"}))
    anywhere = submit(client, small(SPACE, budget=budget(1)))

    # Oldest first, among what each can run (a worker holding a trial would get it back, so
    # each claim is a new worker's).
    assert experiment_claimed(client, worker_on(client, "cpu")) == anywhere
    # The cuda ones are not for it.
    assert experiment_claimed(client, worker_on(client, "cpu")) is None
    assert experiment_claimed(client, worker_on(client, "cuda:0", memory_gb=24.0)) == any_gpu
    # Under 40 GB.
    assert experiment_claimed(client, worker_on(client, "cuda:0", memory_gb=24.0)) is None
    assert experiment_claimed(client, worker_on(client, "cuda:1", memory_gb=80.0)) == big_gpu


def test_an_experiment_no_live_worker_can_run_says_why(client: TestClient) -> None:
    needy = submit(
        client,
        small(SPACE, budget=budget(2), requirements={"device": "cuda", "min_device_memory_gb": 40}),
    )
    read = client.get(f"{API}/experiments/{needy}").json()
    assert read["waiting_for"] == "no worker is live"
    for _ in range(2):
        experiment_claimed(client, worker_on(client, "cpu"))
    experiment_claimed(client, worker_on(client, "cuda:0", memory_gb=16.0))
    why = client.get(f"{API}/experiments/{needy}").json()["waiting_for"]
    assert why.startswith("no live worker can run it: it needs device cuda and 40 GB")
    assert "2 because its device is cpu" in why and "1 because its device has 16 GB" in why
    listed = client.get(f"{API}/experiments").json()["items"][0]
    assert listed["waiting_for"] == why

    able = worker_on(client, "cuda:1", memory_gb=80.0)
    assert experiment_claimed(client, able) == needy
    assert client.get(f"{API}/experiments/{needy}").json()["waiting_for"] is None


def test_a_worker_of_another_project_is_no_help(client: TestClient) -> None:
    authorize(client, role="user", project="a")
    experiment = submit(client, small(SPACE, budget=budget(1)))
    authorize(client, role="worker", project="b")
    experiment_claimed(client, worker_on(client, "cpu"))
    authorize(client, role="admin")
    # Project b's worker is no help, and project a's status says nothing about it.
    assert client.get(f"{API}/experiments/{experiment}").json()["waiting_for"] == (
        "no worker is live"
    )


def test_requirements_are_validated(client: TestClient) -> None:
    for requirements, field in (
        ({"device": "tpu"}, "requirements.device"),
        ({"min_device_memory_gb": -1}, "requirements.min_device_memory_gb"),
        ({"gpus": 2}, "requirements.gpus"),
    ):
        refused = client.post(f"{API}/experiments", json=small(SPACE, requirements=requirements))
        assert refused.status_code == 422 and refused.json()["error"]["field"] == field


def test_a_worker_registered_for_a_project_runs_only_its_trials(client: TestClient) -> None:
    other = submit(client, {**small(SPACE, budget=budget(1)), "project": "b"})
    authorize(client, role="worker", project="a")
    worker = worker_on(client, "cpu")
    authorize(client, role="admin")  # an unscoped token claiming for it changes nothing
    assert experiment_claimed(client, worker) is None
    assert client.get(f"{API}/experiments/{other}").json()["trials_created"] == 0
