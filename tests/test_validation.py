"""Bad input gets a 4xx naming the field, and changes nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.helpers import attempt_headers, make_spec, remember

API = "/api/v1"


def with_param(name: str, param: dict[str, Any]) -> dict[str, Any]:
    space = make_spec()["search_space"]
    space[name] = param
    return {"search_space": space}


BAD_SPECS = [
    # (what is wrong, overrides of the example spec, the field the error must name)
    (
        "low > high",
        with_param("lr", {"type": "float", "low": 0.3, "high": 1e-4}),
        "search_space.lr.high",
    ),
    (
        "int low > high",
        with_param("hidden_units", {"type": "int", "low": 9, "high": 3}),
        "search_space.hidden_units.high",
    ),
    (
        "log with low <= 0",
        with_param("lr", {"type": "float", "low": 0.0, "high": 1, "log": True}),
        "search_space.lr.log",
    ),
    (
        "empty choices",
        with_param("optimizer", {"type": "categorical", "choices": []}),
        "search_space.optimizer.choices",
    ),
    (
        "duplicate choices",
        with_param("batch_size", {"type": "categorical", "choices": [16, 16]}),
        "search_space.batch_size.choices",
    ),
    (
        "unknown param type",
        with_param("lr", {"type": "gaussian", "low": 0, "high": 1}),
        "search_space.lr",
    ),
    ("unknown model", {"model": "resnet9000"}, "model"),
    ("unknown dataset", {"dataset": "imagenet"}, "dataset.name"),
    (
        "unknown optimizer",
        with_param("optimizer", {"type": "categorical", "choices": ["adam", "lion"]}),
        "search_space.optimizer.choices[1]",
    ),
    ("unknown activation", {"fixed": {"epochs": 3, "activation": "swish"}}, "fixed.activation"),
    (
        "unknown hyperparameter",
        with_param("warmup", {"type": "int", "low": 1, "high": 3}),
        "search_space.warmup",
    ),
    ("unknown sampler", {"sampler": {"name": "annealing"}}, "sampler.name"),
    ("unknown pruner", {"pruner": {"name": "guillotine"}}, "pruner.name"),
    (
        "unknown sampler option",
        {"sampler": {"name": "tpe", "options": {"magic": 1}}},
        "sampler.options.magic",
    ),
    (
        "mistyped sampler option",
        {"sampler": {"name": "tpe", "options": {"n_startup_trials": "x"}}},
        "sampler.options.n_startup_trials",
    ),
    (
        "negative pruner option",
        {"pruner": {"name": "median", "options": {"n_warmup_steps": -1}}},
        "pruner.options.n_warmup_steps",
    ),
    (
        "group without multivariate",
        {"sampler": {"name": "tpe", "options": {"group": True, "multivariate": False}}},
        "sampler",
    ),
    (
        "NaN bound",
        with_param("dropout", {"type": "float", "low": float("nan"), "high": 0.5}),
        "search_space.dropout.low",
    ),
    ("NaN fixed value", {"fixed": {"epochs": 3, "dropout": float("nan")}}, "fixed.dropout"),
    ("huge fixed int", {"fixed": {"epochs": 10**400}}, "fixed.epochs"),
    (
        "huge dataset option",
        {"dataset": {"name": "synthetic", "options": {"n_samples": 10**400}}},
        "dataset.options.n_samples",
    ),
    (
        "tiny step",
        with_param("dropout", {"type": "float", "low": 0.0, "high": 0.5, "step": 1e-300}),
        "search_space.dropout",
    ),
    ("NUL in name", {"name": "a\x00b"}, "name"),
    (
        "bool for an int choice",
        {
            "model": "cnn",
            "dataset": "digits_image",
            "search_space": {},
            "fixed": {"kernel_size": True},
        },
        "fixed.kernel_size",
    ),
    (
        "split seed out of range",
        {"dataset": {"name": "digits", "split_seed": 2**40}},
        "dataset.split_seed",
    ),
    (
        "metric the task lacks",
        {"objective": {"metric": "val_r2", "direction": "maximize"}},
        "objective.metric",
    ),
    (
        "regression metric on classification",
        {"objective": {"metric": "val_mae", "direction": "minimize"}},
        "objective.metric",
    ),
    (
        "unknown metric",
        {"objective": {"metric": "n_flops", "direction": "minimize"}},
        "objective.metric",
    ),
    ("n_trials = 0", {"budget": {"n_trials": 0}}, "budget.n_trials"),
    ("n_trials < 0", {"budget": {"n_trials": -5}}, "budget.n_trials"),
    (
        "max_concurrent = 0",
        {"budget": {"n_trials": 5, "max_concurrent": 0}},
        "budget.max_concurrent",
    ),
    ("unknown top-level field", {"schedule": "nightly"}, "schedule"),
    (
        "unknown nested field",
        {"objective": {"metric": "val_accuracy", "direction": "maximize", "goal": 1}},
        "objective.goal",
    ),
    (
        "bad direction",
        {"objective": {"metric": "val_accuracy", "direction": "up"}},
        "objective.direction",
    ),
    ("cnn on flat data", {"model": "cnn", "search_space": {}}, "dataset.name"),
    ("out-of-range fixed value", {"fixed": {"epochs": 0}}, "fixed.epochs"),
    (
        "float range for an int",
        with_param("batch_size", {"type": "float", "low": 8, "high": 64}),
        "search_space.batch_size.type",
    ),
    (
        "dropout of 1",
        with_param("dropout", {"type": "float", "low": 0.0, "high": 1.0}),
        "search_space.dropout.high",
    ),
    (
        "unknown dataset option",
        {"dataset": {"name": "digits", "options": {"n_samples": 5}}},
        "dataset.options.n_samples",
    ),
    ("empty name", {"name": ""}, "name"),
]


@pytest.mark.parametrize(
    ("problem", "overrides", "field"), BAD_SPECS, ids=[case[0] for case in BAD_SPECS]
)
def test_bad_spec_is_422_naming_the_field_and_writes_nothing(
    client: TestClient, problem: str, overrides: dict[str, Any], field: str
) -> None:
    body = json.dumps(make_spec(**overrides))  # as Python writes it: NaN stays a NaN token
    response = client.post(
        f"{API}/experiments", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    assert error["message"]
    assert client.get(f"{API}/experiments").json()["total"] == 0


@pytest.mark.parametrize(
    ("dataset", "metric"),
    [("digits", "n_params"), ("breast_cancer", "latency_ms"), ("diabetes", "train_seconds")],
)
def test_cost_metric_is_an_objective_for_every_task(
    client: TestClient, dataset: str, metric: str
) -> None:
    objective = {"metric": metric, "direction": "minimize"}
    response = client.post(
        f"{API}/experiments", json=make_spec(dataset=dataset, objective=objective)
    )
    assert response.status_code == 201, response.text
    assert response.json()["spec"]["objective"].items() >= objective.items()


def test_missing_required_fields_are_named(client: TestClient) -> None:
    spec = make_spec()
    del spec["budget"]
    error = client.post(f"{API}/experiments", json=spec).json()["error"]
    assert error["field"] == "budget"


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2", b"\xff\xfe"])
def test_malformed_json_is_a_4xx(client: TestClient, body: bytes) -> None:
    response = client.post(
        f"{API}/experiments", content=body, headers={"content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500
    assert "error" in response.json()


def test_unknown_ids_are_404(client: TestClient) -> None:
    for path in (
        "/experiments/999",
        "/trials/999",
        "/trials/999/model",
        "/experiments/999/trials",
        "/experiments/999/best",
    ):
        response = client.get(API + path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
    assert client.post(f"{API}/experiments/999/pause").status_code == 404
    assert client.delete(f"{API}/experiments/999").status_code == 404
    report = {"epoch": 1, "metrics": {"val_accuracy": 0.5}}
    stale = {"X-Attempt-Token": "0" * 32}
    assert client.post(f"{API}/trials/999/reports", json=report, headers=stale).status_code == 404
    assert client.post(f"{API}/workers/999/claim", json={}).status_code == 404


def test_bad_worker_messages_are_rejected(client: TestClient) -> None:
    client.post(f"{API}/experiments", json=make_spec())
    worker = client.post(f"{API}/workers", json={"name": "w"}).json()["id"]
    trial = remember(client.post(f"{API}/workers/{worker}/claim", json={}).json())["trial_id"]
    cases = [
        ("reports", {"epoch": 0, "metrics": {"val_accuracy": 0.5}}, "epoch"),
        ("reports", {"epoch": 1, "metrics": {"train_loss": 0.5}}, "metrics.val_accuracy"),
        ("reports", {"epoch": 1, "metrics": {"val_accuracy": "high"}}, "metrics.val_accuracy"),
        ("complete", {"value": "NaN"}, "value"),
        ("fail", {"reason": "bored"}, "reason"),
    ]
    for action, body, field in cases:
        response = client.post(
            f"{API}/trials/{trial}/{action}", json=body, headers=attempt_headers(trial)
        )
        assert response.status_code == 422, (action, body, response.text)
        assert response.json()["error"]["field"].startswith(field), response.json()
    no_token = client.post(f"{API}/trials/{trial}/reports", json=cases[0][1] | {"epoch": 1})
    assert no_token.status_code == 422
    assert no_token.json()["error"]["field"] == "X-Attempt-Token"
    nan_report = '{"epoch": 1, "metrics": {"val_accuracy": NaN}}'
    response = client.post(
        f"{API}/trials/{trial}/reports",
        headers={**attempt_headers(trial), "content-type": "application/json"},
        content=nan_report,
    )
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "metrics.val_accuracy"
    detail = client.get(f"{API}/trials/{trial}").json()
    assert (detail["state"], detail["metrics"]) == ("running", [])


def test_errors_do_not_leak_internals(client: TestClient) -> None:
    response = client.get(f"{API}/experiments/not-a-number")
    assert response.status_code == 422
    assert "Traceback" not in response.text and "SELECT" not in response.text
