"""Programs on the service's side: specs that name one, claims routed to the workers that run
it, reports with the program's own metrics, and the per-attempt time limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sweep.client import SweepClient
from tests.helpers import API, call, claim, claim_trial, register, submit, wait_for_end
from tests.processes import ServerProcess, start_worker, stop_workers


def program_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "own-cnn",
        "program": "train_cnn",
        "objective": {"metric": "val_macro_f1", "direction": "maximize"},
        "search_space": {
            "lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
            "focal_gamma": {"type": "float", "low": 0.0, "high": 3.0},
            "augment": {"type": "categorical", "choices": ["none", "flip", "shift"]},
        },
        "fixed": {"epochs": 3, "class_weights": "balanced"},
        "sampler": {"name": "tpe", "seed": 3},
        "budget": {"n_trials": 4, "max_concurrent": 2},
    }
    spec.update(overrides)
    return spec


def test_a_program_spec_takes_its_own_parameters_and_metric(client: Any) -> None:
    experiment_id = submit(client, program_spec())
    stored = client.get(f"{API}/experiments/{experiment_id}").json()["spec"]
    assert stored["program"] == "train_cnn"
    assert "model" not in stored and "dataset" not in stored
    assert stored["objective"]["metric"] == "val_macro_f1"
    assert stored["requirements"]["resources"] == {"processes": 1}

    trial = claim_trial(client, register(client, "w", programs=["train_cnn"]))
    assert trial["program"] == "train_cnn" and trial["model"] is None
    assert set(trial["params"]) == {"lr", "focal_gamma", "augment"}
    # The params as the sampler gave them, with the fixed values as they are.
    assert trial["config"] == {**trial["params"], "epochs": 3, "class_weights": "balanced"}
    assert trial["objectives"] == [
        {"metric": "val_macro_f1", "direction": "maximize", "reduce": "best"}
    ]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": "mlp"}, "model"),
        ({"dataset": "digits"}, "dataset"),
        ({"program": None}, "program"),
        ({"program": "train cnn"}, "program"),
        ({"fixed": {"lr": 0.1}}, "fixed.lr"),
        (
            {"search_space": {"lr": {"type": "float", "low": 1, "high": 0.1}}},
            "search_space.lr.high",
        ),
        (
            {
                "search_space": {
                    "a": {"type": "categorical", "choices": ["x", "y"]},
                    "b": {
                        "type": "float",
                        "low": 0,
                        "high": 1,
                        "when": {"param": "a", "in": ["z"]},
                    },
                }
            },
            "search_space.b.when.in[0]",
        ),
        ({"requirements": {"resources": {"processes": 0}}}, "requirements.resources.processes"),
        ({"budget": {"n_trials": 2, "trial_timeout_s": 0}}, "budget.trial_timeout_s"),
    ],
)
def test_a_bad_program_spec_names_the_field_and_creates_nothing(
    client: Any, change: dict[str, Any], field: str
) -> None:
    spec = program_spec(**change)
    if spec["program"] is None:
        del spec["program"]
    response = client.post(f"{API}/experiments", json=spec)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field
    assert client.get(f"{API}/experiments").json()["total"] == 0


def test_only_a_worker_that_runs_the_program_claims_its_trials(client: Any) -> None:
    experiment_id = submit(client, program_spec())
    builtin_only = register(client, "stock")
    other_program = register(client, "other", programs=["train_rnn"])
    assert claim(client, builtin_only) is None
    assert claim(client, other_program) is None
    why = client.get(f"{API}/experiments/{experiment_id}").json()["waiting_for"]
    assert "the program 'train_cnn'" in why
    assert "does not run the program 'train_cnn'" in why

    runs_it = register(client, "cnn", programs=["train_rnn", "train_cnn"])
    assert claim_trial(client, runs_it)["experiment_id"] == experiment_id
    assert client.get(f"{API}/experiments/{experiment_id}").json()["waiting_for"] is None


def test_a_program_reports_any_metrics_and_the_objective_when_it_has_it(client: Any) -> None:
    submit(client, program_spec(pruner={"name": "none"}))
    trial = claim_trial(client, register(client, "w", programs=["train_cnn"]))
    assert call(client, trial, "reports", epoch=1, metrics={"train_loss": 2.0}).json() == {
        "action": "continue",
        "reason": None,
    }
    answer = call(
        client, trial, "reports", epoch=2, metrics={"train_loss": 1.0, "val_macro_f1": 0.4}
    )
    assert answer.json()["action"] == "continue"
    done = call(client, trial, "complete", value=0.4, epoch=2)
    assert done.status_code == 200, done.text
    detail = client.get(f"{API}/trials/{trial['trial_id']}").json()
    assert detail["value"] == 0.4 and detail["best_epoch"] == 2
    assert [m["values"] for m in detail["metrics"]] == [
        {"train_loss": 2.0},
        {"train_loss": 1.0, "val_macro_f1": 0.4},
    ]


def test_an_attempt_past_its_time_limit_fails_and_its_worker_is_told_to_stop(
    client: Any,
) -> None:
    experiment_id = submit(client, program_spec(budget={"n_trials": 1, "trial_timeout_s": 0.01}))
    trial = claim_trial(client, register(client, "w", programs=["train_cnn"]))
    assert trial["trial_timeout_s"] == 0.01
    answer = call(client, trial, "heartbeat").json()
    assert answer["action"] == "stop" and "timed out" in answer["reason"]
    ended = client.get(f"{API}/trials/{trial['trial_id']}").json()
    assert (ended["state"], ended["failure_reason"]) == ("failed", "error")
    assert "budget.trial_timeout_s" in ended["failure_message"]
    assert client.get(f"{API}/experiments/{experiment_id}").json()["counts"]["failed"] == 1


# --- real servers, real workers, real programs ----------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "programs"
SCRIPT = f"train_cnn={{python}} {EXAMPLES / 'train_cnn.py'} {{args}}"


def cnn_spec(n_trials: int, **overrides: Any) -> dict[str, Any]:
    spec = program_spec(
        search_space={
            "lr": {"type": "float", "low": 3e-3, "high": 3e-2, "log": True},
            "focal_gamma": {"type": "float", "low": 0.0, "high": 3.0},
            "augment": {"type": "categorical", "choices": ["none", "shift", "flip"]},
        },
        fixed={"epochs": 3},
        pruner={"name": "none"},
        budget={"n_trials": n_trials, "max_concurrent": 1},
    )
    spec.update(overrides)
    return spec


@pytest.mark.processes
def test_a_script_program_completes_a_sweep_on_its_own_metric(
    server: ServerProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    client = SweepClient(server.url, token=server.admin_token)
    request.addfinalizer(client.close)
    experiment = client.submit(cnn_spec(2))
    worker = start_worker(server, tmp_path, "cnn", "--program", SCRIPT, "--max-trials", "2")
    try:
        ended = wait_for_end(client, experiment["id"], timeout=120)
    finally:
        stop_workers([worker])
    assert ended["state"] == "completed", ended
    for trial in client.all_trials(experiment["id"]):
        detail = client.trial(trial["id"])
        assert detail["state"] == "completed", detail
        curve = [m["values"] for m in detail["metrics"]]
        assert [c["step"] for c in curve] == [1.0, 2.0, 3.0]
        assert detail["value"] == max(c["val_macro_f1"] for c in curve)
        assert detail["has_weights"]
