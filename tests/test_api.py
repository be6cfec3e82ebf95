"""The API contract, run on SQLite and on PostgreSQL against the real app."""

from __future__ import annotations

import threading
import time
from typing import Any

from fastapi.testclient import TestClient

from sweep.service.tables import Trial
from tests.helpers import attempt_headers, budget, claim, claim_trial, make_spec, register

API = "/api/v1"


def create(client: TestClient, **overrides: Any) -> dict[str, Any]:
    response = client.post(f"{API}/experiments", json=make_spec(**overrides))
    assert response.status_code == 201, response.text
    return dict(response.json())


def report(client: TestClient, trial_id: int, epoch: int, accuracy: float) -> dict[str, Any]:
    metrics = {"val_accuracy": accuracy, "val_loss": 1 - accuracy, "train_loss": 0.5}
    response = client.post(
        f"{API}/trials/{trial_id}/reports",
        headers=attempt_headers(trial_id),
        json={"epoch": epoch, "metrics": metrics},
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def run_trial(client: TestClient, worker: int, curve: list[float]) -> dict[str, Any]:
    assignment = claim(client, worker)
    assert assignment is not None
    for epoch, value in enumerate(curve, 1):
        report(client, assignment["trial_id"], epoch, value)
    response = client.post(
        f"{API}/trials/{assignment['trial_id']}/complete",
        headers=attempt_headers(assignment["trial_id"]),
        json={"value": max(curve), "epoch": curve.index(max(curve)) + 1},
    )
    assert response.status_code == 200, response.text
    return assignment


def test_submitted_spec_is_stored_with_defaults(client: TestClient) -> None:
    experiment = create(client)
    assert experiment["state"] == "running"
    assert experiment["spec"]["dataset"] == {
        "name": "digits",
        "options": {},
        "val_fraction": 0.2,
        "split_seed": 0,
        "standardize": True,
    }
    assert experiment["spec"]["objective"]["reduce"] == "best"
    assert experiment["spec"]["budget"]["max_retries"] == 3
    assert experiment["counts"] == {
        "queued": 0,
        "running": 0,
        "completed": 0,
        "pruned": 0,
        "failed": 0,
        "cancelled": 0,
    }
    again = client.get(f"{API}/experiments/{experiment['id']}").json()
    assert again["spec"] == experiment["spec"]
    listed = client.get(f"{API}/experiments").json()
    assert [e["id"] for e in listed["items"]] == [experiment["id"]]


def test_an_idempotency_key_submits_once(client: TestClient) -> None:
    spec = make_spec(budget=budget(3))
    key = {"Idempotency-Key": "nightly-2026-12-02"}
    first = client.post(f"{API}/experiments", json=spec, headers=key)
    assert first.status_code == 201, first.text
    again = client.post(f"{API}/experiments", json=spec, headers=key)
    assert (again.status_code, again.headers.get("Idempotent-Replayed")) == (200, "true")
    assert again.json()["id"] == first.json()["id"]
    other = client.post(f"{API}/experiments", json={**spec, "name": "another"}, headers=key)
    assert other.status_code == 409
    assert other.json()["error"]["field"] == "Idempotency-Key"
    # Without a key, or with another one, the same spec is a new experiment.
    assert client.post(f"{API}/experiments", json=spec).json()["id"] != first.json()["id"]
    fresh = client.post(f"{API}/experiments", json=spec, headers={"Idempotency-Key": "other"})
    assert fresh.status_code == 201
    assert client.get(f"{API}/experiments").json()["total"] == 3


def test_a_trial_is_named_by_its_experiment_and_number(client: TestClient) -> None:
    experiment_id = client.post(f"{API}/experiments", json=make_spec()).json()["id"]
    assignment = claim_trial(client, "w")
    trial = client.get(f"{API}/trials/{assignment['trial_id']}").json()
    assert trial["name"] == f"{experiment_id}/{trial['number']}"
    named = client.get(f"{API}/experiments/{experiment_id}/trials/{trial['number']}")
    assert named.json()["id"] == trial["id"]
    missing = client.get(f"{API}/experiments/{experiment_id}/trials/99")
    assert missing.status_code == 404 and "no trial number 99" in missing.text


def test_trial_lifecycle_from_claim_to_weights(client: TestClient) -> None:
    experiment = create(client, budget=budget(2))
    worker = register(client)
    assignment = claim(client, worker)
    assert assignment is not None
    assert set(assignment["params"]) == set(make_spec()["search_space"])
    assert assignment["config"]["epochs"] == 20  # fixed values reach the worker
    assert assignment["config"]["hidden_layers"] == 2  # and so do defaults
    trial_id = assignment["trial_id"]
    for epoch, accuracy in enumerate([0.5, 0.7, 0.9], 1):
        assert report(client, trial_id, epoch, accuracy)["action"] == "continue"
    assert (
        client.put(
            f"{API}/trials/{trial_id}/weights",
            headers=attempt_headers(trial_id, b"weights"),
            content=b"weights",
        ).status_code
        == 204
    )
    done = client.post(
        f"{API}/trials/{trial_id}/complete",
        headers=attempt_headers(trial_id),
        json={"value": 0.9, "epoch": 3},
    )
    assert done.json()["state"] == "completed"

    detail = client.get(f"{API}/trials/{trial_id}").json()
    assert [m["epoch"] for m in detail["metrics"]] == [1, 2, 3]
    assert detail["metrics"][2]["values"]["val_accuracy"] == 0.9
    assert detail["params"] == assignment["params"]
    assert client.get(f"{API}/trials/{trial_id}/model").content == b"weights"
    status = client.get(f"{API}/experiments/{experiment['id']}").json()
    assert status["counts"]["completed"] == 1
    assert (status["best_value"], status["best_trial_id"]) == (0.9, trial_id)


def test_budget_and_concurrency_limits(client: TestClient) -> None:
    experiment = create(client, budget=budget(3, max_concurrent=2))
    workers = [register(client, f"w{i}") for i in range(4)]
    first, second = claim(client, workers[0]), claim(client, workers[1])
    assert first and second
    assert claim(client, workers[2]) is None  # two running: no third
    client.post(
        f"{API}/trials/{first['trial_id']}/complete",
        headers=attempt_headers(first["trial_id"]),
        json={"value": 0.5},
    )
    third = claim(client, workers[2])
    assert third is not None and third["number"] == 2
    assert claim(client, workers[3]) is None  # budget spent
    for trial in (second, third):
        client.post(
            f"{API}/trials/{trial['trial_id']}/complete",
            headers=attempt_headers(trial["trial_id"]),
            json={"value": 0.6},
        )
    status = client.get(f"{API}/experiments/{experiment['id']}").json()
    assert status["state"] == "completed"
    assert status["trials_created"] == 3


def test_a_worker_asking_again_gets_the_trial_it_holds(client: TestClient) -> None:
    create(client, budget=budget(5, max_concurrent=1))
    worker, other = register(client, "holder"), register(client, "other")
    first = claim(client, worker)
    assert claim(client, other) is None  # the one slot is taken, and not by this worker
    again = claim(client, worker)
    assert first and again
    assert (first["trial_id"], first["token"]) == (again["trial_id"], again["token"])


def test_a_trial_whose_training_ended_frees_its_slot_while_its_worker_finishes_it(
    client: TestClient,
) -> None:
    experiment = create(client, budget=budget(3, max_concurrent=1))
    worker, other = register(client, "finisher"), register(client, "other")
    first = claim_trial(client, worker)
    # Its worker would wait for its end before claiming: below SWEEP_ASK_AHEAD_AFTER trials,
    # suggestions wait for the results before them. Told so, the service frees the slot.
    assert first["claim_before_end"] is False
    assert report(client, first["trial_id"], 1, 0.7)["action"] == "continue"
    # Only its own worker may say a trial's training ended.
    assert claim(client, other, finishing=[first["trial_id"]]) is None
    second = claim_trial(client, worker, finishing=[first["trial_id"]])
    assert second["trial_id"] != first["trial_id"]
    assert claim(client, other) is None  # the one slot is the second trial's
    again = claim_trial(client, worker, finishing=[first["trial_id"]])  # its answer was lost
    assert (again["trial_id"], again["token"]) == (second["trial_id"], second["token"])
    status = client.get(f"{API}/experiments/{experiment['id']}").json()
    assert status["counts"]["running"] == 2

    # The first attempt still sends its model and its result.
    put = client.put(
        f"{API}/trials/{first['trial_id']}/weights",
        headers=attempt_headers(first["trial_id"], b"model"),
        content=b"model",
    )
    assert put.status_code == 204
    done = client.post(
        f"{API}/trials/{first['trial_id']}/complete",
        headers=attempt_headers(first["trial_id"]),
        json={"value": 0.7, "epoch": 1},
    )
    assert done.json()["state"] == "completed"
    assert client.get(f"{API}/trials/{first['trial_id']}/model").content == b"model"
    bad = client.post(f"{API}/workers/{worker}/claim", json={"finishing": [0]})
    assert bad.status_code == 422 and "finishing" in bad.text


def test_pause_resume_cancel(client: TestClient) -> None:
    experiment = create(client, budget=budget(10))
    eid = experiment["id"]
    worker, other = register(client), register(client, "other")
    running = claim(client, worker)
    assert running is not None
    assert client.post(f"{API}/experiments/{eid}/pause").json()["state"] == "paused"
    assert claim(client, other) is None
    assert report(client, running["trial_id"], 1, 0.5)["action"] == "continue"
    assert client.post(f"{API}/experiments/{eid}/resume").json()["state"] == "running"
    assert claim(client, other) is not None
    assert client.post(f"{API}/experiments/{eid}/cancel").json()["state"] == "cancelled"
    answer = report(client, running["trial_id"], 2, 0.6)
    assert answer["action"] == "stop"
    trial = client.get(f"{API}/trials/{running['trial_id']}").json()
    assert trial["state"] == "cancelled"
    late = client.post(
        f"{API}/workers/{register(client, 'late')}/claim", json={"experiment_id": eid}
    )
    assert late.status_code == 409
    assert client.post(f"{API}/experiments/{eid}/resume").status_code == 409


def test_reports_to_finished_trials_conflict_and_repeats_are_harmless(client: TestClient) -> None:
    create(client, budget=budget(3))
    worker = register(client)
    assignment = run_trial(client, worker, [0.4, 0.6])
    trial_id = assignment["trial_id"]
    again = client.post(
        f"{API}/trials/{trial_id}/complete",
        headers=attempt_headers(trial_id),
        json={"value": 0.6, "epoch": 2},
    )
    assert again.status_code == 200  # the same completion, retried
    late = client.post(
        f"{API}/trials/{trial_id}/reports",
        headers=attempt_headers(trial_id),
        json={"epoch": 3, "metrics": {"val_accuracy": 0.7}},
    )
    assert late.status_code == 409
    other = client.post(
        f"{API}/trials/{trial_id}/complete", headers=attempt_headers(trial_id), json={"value": 0.1}
    )
    assert other.status_code == 409
    detail = client.get(f"{API}/trials/{trial_id}").json()
    assert (detail["value"], len(detail["metrics"])) == (0.6, 2)

    second = claim(client, worker)
    assert second is not None
    report(client, second["trial_id"], 1, 0.3)
    assert report(client, second["trial_id"], 1, 0.3)["action"] == "continue"  # retried
    gap = client.post(
        f"{API}/trials/{second['trial_id']}/reports",
        headers=attempt_headers(second["trial_id"]),
        json={"epoch": 5, "metrics": {"val_accuracy": 0.3}},
    )
    assert gap.status_code == 409
    assert len(client.get(f"{API}/trials/{second['trial_id']}").json()["metrics"]) == 1


def test_a_report_keeps_the_objective_it_carries_as_the_trials_last(
    client: TestClient,
) -> None:
    """What a pruned or out-of-memory trial is scored by: the last objective reported, kept
    when a program's report carries other metrics only."""
    program = make_spec(program="train_cnn", budget=budget(1))
    for key in ("model", "dataset"):
        program.pop(key, None)
    created = client.post(f"{API}/experiments", json=program)
    assert created.status_code == 201, created.text
    trial_id = claim_trial(client, register(client, "w", programs=["train_cnn"]))["trial_id"]

    def last_objective() -> float | None:
        with client.app.state.db.transaction() as session:  # type: ignore[attr-defined]
            return session.get(Trial, trial_id).last_objective

    def send(epoch: int, metrics: dict[str, float]) -> None:
        response = client.post(
            f"{API}/trials/{trial_id}/reports",
            headers=attempt_headers(trial_id),
            json={"epoch": epoch, "metrics": metrics},
        )
        assert response.status_code == 200, response.text

    send(1, {"train_loss": 0.9})
    assert last_objective() is None
    send(2, {"train_loss": 0.7, "val_accuracy": 0.41, "val_loss": 0.6})
    assert last_objective() == 0.41
    send(3, {"train_loss": 0.5})
    assert last_objective() == 0.41
    send(4, {"val_accuracy": 0.62})
    assert last_objective() == 0.62


def test_median_pruner_stops_a_bad_trial(client: TestClient) -> None:
    create(
        client, budget=budget(3, 1), pruner={"name": "median", "options": {"n_startup_trials": 1}}
    )
    worker = register(client)
    run_trial(client, worker, [0.8, 0.9, 0.95])
    bad = claim(client, worker)
    assert bad is not None
    answer = report(client, bad["trial_id"], 1, 0.1)
    assert answer["action"] == "prune"
    assert report(client, bad["trial_id"], 1, 0.1) == answer  # a retry hears the same
    trial = client.get(f"{API}/trials/{bad['trial_id']}").json()
    assert (trial["state"], trial["value"], len(trial["metrics"])) == ("pruned", 0.1, 1)


def test_trial_list_pages_filters_and_sorts(client: TestClient) -> None:
    experiment = create(client, budget=budget(6, 1))
    eid = experiment["id"]
    worker = register(client)
    values = [0.3, 0.9, 0.1, 0.7, 0.5]
    for value in values:
        run_trial(client, worker, [value])
    failed = claim(client, worker)
    assert failed is not None
    client.post(
        f"{API}/trials/{failed['trial_id']}/fail",
        headers=attempt_headers(failed["trial_id"]),
        json={"reason": "error", "message": "boom"},
    )

    page = client.get(f"{API}/experiments/{eid}/trials", params={"limit": 2, "offset": 2}).json()
    assert page["total"] == 6 and [t["number"] for t in page["items"]] == [2, 3]
    ranked = client.get(f"{API}/experiments/{eid}/trials", params={"sort": "objective"}).json()
    assert [t["value"] for t in ranked["items"]] == [0.9, 0.7, 0.5, 0.3, 0.1, None]
    worst = client.get(
        f"{API}/experiments/{eid}/trials",
        params={"sort": "objective", "order": "asc", "state": "completed"},
    ).json()
    assert [t["value"] for t in worst["items"]] == sorted(values)
    failures = client.get(f"{API}/experiments/{eid}/trials", params={"state": "failed"}).json()
    assert failures["total"] == 1 and failures["items"][0]["failure_message"] == "boom"
    top = client.get(f"{API}/experiments/{eid}/best", params={"k": 3}).json()
    assert [t["value"] for t in top["trials"]] == [0.9, 0.7, 0.5]
    assert client.get(f"{API}/experiments/{eid}").json()["state"] == "completed"


def test_best_for_a_minimized_objective(client: TestClient) -> None:
    eid = create(
        client, objective={"metric": "val_loss", "direction": "minimize"}, budget=budget(3, 1)
    )["id"]
    worker = register(client)
    for value in (0.4, 0.2, 0.3):
        trial = claim(client, worker)
        assert trial is not None
        client.post(
            f"{API}/trials/{trial['trial_id']}/complete",
            headers=attempt_headers(trial["trial_id"]),
            json={"value": value},
        )
    top = client.get(f"{API}/experiments/{eid}/best", params={"k": 2}).json()
    assert [t["value"] for t in top["trials"]] == [0.2, 0.3]
    assert client.get(f"{API}/experiments/{eid}").json()["best_value"] == 0.2


def test_delete_removes_everything(client: TestClient) -> None:
    eid = create(client, budget=budget(2))["id"]
    worker = register(client)
    trial = run_trial(client, worker, [0.5])
    assert client.delete(f"{API}/experiments/{eid}").status_code == 204
    assert client.get(f"{API}/experiments/{eid}").status_code == 404
    assert client.get(f"{API}/trials/{trial['trial_id']}").status_code == 404
    assert client.get(f"{API}/experiments").json()["total"] == 0
    # Ids are never reused, so nothing of the deleted experiment leaks into a new one.
    again = create(client, budget=budget(2))
    assert again["id"] > eid
    fresh = claim(client, register(client, "fresh"))
    assert fresh is not None
    assert (fresh["number"], fresh["experiment_id"]) == (0, again["id"])
    assert fresh["trial_id"] > trial["trial_id"]


def test_idle_claim_waits_and_wakes_when_work_arrives(client: TestClient) -> None:
    worker = register(client)
    started = time.monotonic()
    assert claim(client, worker, wait_seconds=0.5) is None
    assert time.monotonic() - started >= 0.45  # it waited server-side

    result: dict[str, Any] = {}

    def wait_for_work() -> None:
        result["assignment"] = claim(client, worker, wait_seconds=20)
        result["waited"] = time.monotonic() - began

    asked = threading.Event()
    client.event_hooks["request"].append(lambda request: asked.set())
    began = time.monotonic()
    waiter = threading.Thread(target=wait_for_work)
    waiter.start()
    assert asked.wait(30)  # the claim is on its way: the work comes after it
    create(client, budget=budget(1))
    waiter.join(timeout=30)
    assert result["assignment"] is not None
    assert result["waited"] < 15  # woken by the new experiment, not by the 20 s limit


def test_openapi_documents_every_route(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = set(schema["paths"])
    for path in (
        "/api/v1/experiments",
        "/api/v1/experiments/{experiment_id}/best",
        "/api/v1/trials/{trial_id}/model",
        "/api/v1/workers/{worker_id}/claim",
        "/api/v1/healthz",
    ):
        assert path in paths
    # Every operation's group is declared, so the documentation lists the groups in order.
    used = {
        tag
        for operations in schema["paths"].values()
        for op in operations.values()
        for tag in op.get("tags", [])
    }
    assert used <= {tag["name"] for tag in schema["tags"]}
    assert client.get("/docs").status_code == 200
