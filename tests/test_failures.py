"""Every failure ends with its kind, and a broken setup or an old experiment stops itself."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from sweep.service import rows
from sweep.service.app import create_app
from sweep.service.config import Settings
from tests.helpers import authorize, budget, quick_spec, run_worker, submit, trials_of

pytestmark = pytest.mark.usefixtures("one_thread")  # small models train faster on one

API = "/api/v1"
# scikit-learn refuses to split 20 samples into 10 stratified classes: an error on the worker.
BROKEN = {"name": "synthetic", "options": {"n_samples": 20, "n_classes": 10, "n_informative": 5}}
# 1e6 x 4096 float64 features are 30 GiB: more than the machine has, a real MemoryError.
TOO_BIG = {
    "name": "synthetic",
    "options": {"n_samples": 1_000_000, "n_features": 4096, "n_informative": 4096},
}


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    quick = settings.model_copy(update={"lease_check_seconds": 0.1})
    with TestClient(create_app(quick)) as test_client:
        yield authorize(test_client)


def test_out_of_memory_is_its_own_kind_and_the_sampler_learns_it(client: TestClient) -> None:
    experiment_id = submit(
        client, quick_spec(budget=budget(1, 1), fixed={"epochs": 1}, dataset=TOO_BIG)
    )
    healthy = submit(client, quick_spec(budget=budget(1, 1), fixed={"epochs": 1}))
    assert run_worker(client) == 2  # and the worker went on to the next one
    [trial] = trials_of(client, experiment_id)
    assert (trial["state"], trial["failure_reason"]) == ("failed", "oom")
    assert "MemoryError" in trial["failure_message"]
    assert trials_of(client, healthy)[0]["state"] == "completed"

    app = client.app
    with app.state.db.transaction() as session:  # type: ignore[attr-defined]
        experiment = rows.experiment(session, experiment_id)
        [seen] = app.state.optimizer.history(session, experiment)  # type: ignore[attr-defined]
    assert seen.constraints == {"memory": 1.0}  # infeasible for the sampler, not ignored


def test_errors_in_a_row_fail_the_experiment_before_it_burns_its_budget(
    client: TestClient,
) -> None:
    experiment_id = submit(
        client,
        quick_spec(
            fixed={"epochs": 2},
            dataset=BROKEN,
            budget={**budget(20, 1), "max_consecutive_errors": 3},
        ),
    )
    assert run_worker(client) == 3
    experiment = client.get(f"{API}/experiments/{experiment_id}").json()
    assert experiment["state"] == "failed"
    assert experiment["trials_created"] == 3
    assert "3 trials in a row failed with an error" in experiment["stop_reason"]
    assert "ValueError" in experiment["stop_reason"]


def test_a_success_resets_the_error_count(client: TestClient) -> None:
    broken = submit(
        client,
        quick_spec(
            fixed={"epochs": 1},
            dataset=BROKEN,
            budget={**budget(2, 1), "max_consecutive_errors": 3},
        ),
    )
    fine = submit(client, quick_spec(fixed={"epochs": 1}, budget=budget(1, 1)))
    run_worker(client)
    # Under the limit of errors in a row, but none completed: the budget ran out, failing.
    ended = client.get(f"{API}/experiments/{broken}").json()
    assert (ended["state"], ended["stop_reason"]) == ("failed", "all 2 trials failed: 2 error")
    assert client.get(f"{API}/experiments/{fine}").json()["state"] == "completed"


def test_an_experiment_past_its_timeout_stops_and_tells_running_trials(
    client: TestClient,
) -> None:
    experiment_id = submit(
        client, quick_spec(fixed={"epochs": 3}, budget={**budget(5, 1), "timeout_s": 0.5})
    )
    worker = client.post(f"{API}/workers", json={"name": "w"}).json()["id"]
    trial = client.post(f"{API}/workers/{worker}/claim", json={}).json()
    deadline = time.monotonic() + 10
    while (experiment := client.get(f"{API}/experiments/{experiment_id}").json())[
        "state"
    ] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # It timed out before any trial completed: no success either.
    assert experiment["state"] == "failed"
    assert experiment["stop_reason"] == "timed out; no trial of 1 completed: 1 running"
    headers = {"X-Attempt-Token": trial["token"]}
    beat = client.post(f"{API}/trials/{trial['trial_id']}/heartbeat", headers=headers).json()
    assert beat["action"] == "stop"
    report = {"epoch": 1, "metrics": {"val_accuracy": 0.5}}
    answer = client.post(
        f"{API}/trials/{trial['trial_id']}/reports", json=report, headers=headers
    ).json()
    assert answer["action"] == "stop"
    assert client.post(f"{API}/workers/{worker}/claim", json={}).status_code == 204
