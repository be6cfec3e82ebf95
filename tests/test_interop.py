"""Optuna both ways, and the Python client: an experiment becomes an Optuna study (in memory
or in any Optuna storage), and a finished Optuna study starts a new experiment's sampler."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from sweep.client import SweepClient
from tests.helpers import attempt_headers, budget, remember, run_worker, small, submit
from tests.processes import serve

API = "/api/v1"
SPACE = {
    "lr": {"type": "float", "low": 1e-3, "high": 0.3, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.4},
}


@pytest.fixture(autouse=True)
def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def sweep_client(client: TestClient) -> SweepClient:
    return SweepClient(http=client)


def test_an_experiment_becomes_the_optuna_study_the_service_holds(
    client: TestClient, tmp_path: Path
) -> None:
    spec = small(SPACE, fixed={"epochs": 3, "hidden_layers": 1}, budget=budget(4))
    experiment_id = submit(client, spec)
    assert run_worker(client) == 4
    sweep = sweep_client(client)

    study = sweep.to_optuna_study(experiment_id)

    assert len(study.trials) == 4
    assert study.metric_names == ["val_accuracy"]
    best = sweep.best(experiment_id)["trials"][0]
    assert study.best_value == best["value"]
    assert study.best_trial.user_attrs["sweep_trial_id"] == best["id"]
    for frozen in study.trials:
        trial = sweep.trial(frozen.user_attrs["sweep_trial_id"])
        assert frozen.number == trial["number"] and frozen.state == TrialState.COMPLETE
        assert frozen.params == trial["params"]
        assert frozen.distributions["lr"] == FloatDistribution(1e-3, 0.3, log=True)
        curve = {m["epoch"]: m["values"]["val_accuracy"] for m in trial["metrics"]}
        assert frozen.intermediate_values == curve
        assert frozen.datetime_start is not None and frozen.datetime_complete is not None
    # What a notebook does with it.
    assert optuna.visualization.plot_optimization_history(study).data
    assert set(optuna.importance.get_param_importances(study)) == {"lr", "dropout"}

    # Written to an Optuna storage, it loads back as the same study.
    url = f"sqlite:///{tmp_path / 'exported.db'}"
    sweep.to_optuna_study(experiment_id, storage=url, study_name="digits", finished_only=True)
    loaded = optuna.load_study(study_name="digits", storage=url)
    assert len(loaded.trials) == 4 and loaded.best_value == best["value"]
    assert [t.params for t in loaded.trials] == [t.params for t in study.trials]


def optuna_study(url: str, name: str, n: int) -> optuna.Study:
    """A finished Optuna study over SPACE whose best trials have a small dropout."""
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("lr", 1e-3, 0.3, log=True)
        return 1.0 - trial.suggest_float("dropout", 0.0, 0.4)

    study.optimize(objective, n_trials=n)
    return study


def test_a_finished_optuna_study_starts_the_sampler_warm(
    client: TestClient, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'source.db'}"
    source = optuna_study(url, "earlier", 6)
    spec = small(SPACE, budget=budget(2), sampler={"name": "tpe", "seed": 0})
    sweep = sweep_client(client)

    experiment = sweep.import_optuna(spec, storage=url, study_name="earlier")

    assert experiment["n_trials"] == 8 and experiment["trials_created"] == 6
    assert experiment["counts"]["completed"] == 6
    assert experiment["best_value"] == pytest.approx(source.best_value)
    imported = list(sweep.all_trials(experiment["id"]))
    assert [t["params"] for t in imported] == [t.params for t in source.trials]
    assert all(t["worker_id"] is None and not t["has_weights"] for t in imported)
    # The sampler sees them: the next trial is number 6, and the study holds all six.
    assert len(sweep.to_optuna_study(experiment["id"]).trials) == 6
    assert run_worker(client) == 2
    ran = [t for t in sweep.all_trials(experiment["id"]) if t["number"] >= 6]
    assert len(ran) == 2 and all(t["state"] == "completed" for t in ran)
    assert sweep.experiment(experiment["id"])["state"] == "completed"


def test_warm_start_trials_are_checked_and_nothing_is_written(client: TestClient) -> None:
    spec: dict[str, Any] = small(SPACE, budget=budget(2))
    cases = {
        "warm_start[1].params.momentum": [
            {"params": {"lr": 0.01}, "values": [0.5]},
            {"params": {"momentum": 0.9}, "values": [0.5]},
        ],
        "warm_start[0].params.lr": [{"params": {"lr": 5.0}, "values": [0.5]}],
        "warm_start[0].values": [{"params": {"lr": 0.01}, "values": [0.5, 0.1]}],
    }
    for field, warm in cases.items():
        refused = client.post(f"{API}/experiments", json={**spec, "warm_start": warm})
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["field"] == field
    not_finite = {**spec, "warm_start": [{"params": {}, "values": [float("inf")]}]}
    refused = client.post(
        f"{API}/experiments",
        content=json.dumps(not_finite),  # Infinity: JSON that Python writes, and not a value
        headers={"Content-Type": "application/json"},
    )
    assert refused.status_code in (400, 422)
    grid = small(SPACE | {"dropout": {"type": "categorical", "choices": [0.0, 0.1]}})
    grid["search_space"].pop("lr")
    grid["sampler"] = {"name": "grid"}
    refused = client.post(
        f"{API}/experiments",
        json={**grid, "warm_start": [{"params": {"dropout": 0.1}, "values": [0.5]}]},
    )
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "warm_start"
    assert client.get(f"{API}/experiments").json()["total"] == 0


def test_an_out_of_memory_trial_exports_as_a_failure(client: TestClient) -> None:
    experiment_id = submit(client, small(SPACE, budget=budget(2)))
    worker = client.post(f"{API}/workers", json={"name": "w"}).json()["id"]
    trial = remember(client.post(f"{API}/workers/{worker}/claim", json={}).json())
    assert trial is not None
    headers = attempt_headers(trial["trial_id"])
    report = {"epoch": 1, "metrics": {"val_accuracy": 0.4}}
    client.post(f"{API}/trials/{trial['trial_id']}/reports", headers=headers, json=report)
    failed = client.post(
        f"{API}/trials/{trial['trial_id']}/fail",
        headers=headers,
        json={"reason": "oom", "message": "CUDA out of memory"},
    )
    assert failed.status_code == 200, failed.text
    # The service's own sampler sees an infeasible point; an exported study, a failure.
    [frozen] = SweepClient(http=client).to_optuna_study(experiment_id).trials
    assert frozen.state == TrialState.FAIL and frozen.values is None
    assert frozen.user_attrs["failure_reason"] == "oom"


def test_the_client_needs_neither_torch_nor_the_server_stack() -> None:
    code = (
        "import sys\n"
        "from sweep.client import SweepClient\n"
        "SweepClient('http://127.0.0.1:1', token='x').close()\n"
        "heavy = ('torch', 'fastapi', 'starlette', 'sqlalchemy', 'uvicorn', 'optuna', 'pydantic')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.processes
def test_export_and_import_from_the_command_line(
    request: pytest.FixtureRequest, sqlite_url: str, tmp_path: Path
) -> None:
    server, client = serve(request, sqlite_url, tmp_path / "logs")
    source = f"sqlite:///{tmp_path / 'source.db'}"
    optuna_study(source, "earlier", 5)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        "name: warm\nmodel: mlp\ndataset: digits\n"
        "objective: {metric: val_accuracy, direction: maximize}\n"
        "budget: {n_trials: 3}\n"  # no search_space: the study's distributions are it
    )
    cli = [sys.executable, "-m", "sweep.cli"]
    env = {**os.environ, "SWEEP_TOKEN": server.admin_token, "SWEEP_SERVER": server.url}

    def run(*args: str) -> str:
        done = subprocess.run([*cli, *args], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Warning" not in done.stderr, done.stderr  # Optuna's notes are not the user's
        return done.stdout

    said = run("import", str(spec_file), "--from", source, "--study", "earlier")
    assert "starting from 5 trials" in said
    [experiment] = client.experiments()["items"]
    target = f"sqlite:///{tmp_path / 'exported.db'}"
    said = run("export", str(experiment["id"]), "--to", target, "--study", "copy")
    assert "5 trials written" in said
    space = experiment["spec"]["search_space"]
    assert (space["lr"]["low"], space["lr"]["high"], space["lr"]["log"]) == (0.001, 0.3, True)
    assert (space["dropout"]["low"], space["dropout"]["high"]) == (0.0, 0.4)
    copy = optuna.load_study(study_name="copy", storage=target)
    assert copy.best_value == pytest.approx(experiment["best_value"])
    again = subprocess.run(
        [*cli, "export", str(experiment["id"]), "--to", target, "--study", "copy"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert again.returncode == 1 and "already exists" in again.stdout
