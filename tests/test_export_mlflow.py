"""A real server and real workers run a small sweep whose trials end completed, pruned and
failed; exported to a local MLflow store, it reads back through MLflow's own client as Sweep
has it, and exporting again adds only what is new."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from sweep.client import SweepClient
from sweep.export_mlflow import (
    EXPERIMENT_TAG,
    PARENT_TAG,
    TRIAL_TAG,
    Exported,
    _params,
    export,
)
from tests.helpers import budget, make_spec, wait_for_end
from tests.processes import ServerProcess, start_worker, stop_workers

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient  # imported by the test that reads MLflow back

# MLflow's tracking store on the SQLAlchemy these tests run with, read back by the test.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*")

# One worker runs them in this order. A trial below the threshold pruner's bound at its first
# epoch is pruned, and this learning rate makes the loss non-finite (test_training).
DIVERGES = {"lr": 5.0, "optimizer": "sgd"}
LEARNS = [{"lr": 0.01, "optimizer": "adam"}, {"lr": 0.003, "optimizer": "adam"}]
TOO_SLOW = {"lr": 1e-5, "optimizer": "sgd"}
STATUS = {"completed": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}


@pytest.mark.processes  # a real server and worker processes
@pytest.mark.timeout(240)
def test_an_experiment_exports_to_mlflow_and_again_without_duplicates(
    server: ServerProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from mlflow.tracking import MlflowClient

    started = time.monotonic()
    client = SweepClient(server.url, token=server.admin_token)
    request.addfinalizer(client.close)
    spec = make_spec(
        search_space={
            "lr": {"type": "float", "low": 1e-5, "high": 10.0, "log": True},
            "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
        },
        fixed={"epochs": 2, "activation": "leaky_relu", "hidden_layers": 3, "hidden_units": 128},
        pruner={"name": "threshold", "options": {"lower": 0.5}},
        budget=budget(4, 1),
    )
    experiment_id = client.submit(spec)["id"]
    for params in [LEARNS[0], DIVERGES, TOO_SLOW, LEARNS[1]]:
        client.enqueue(experiment_id, params)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    artifacts = (tmp_path / "mlartifacts").as_uri()

    # Half the trials, the experiment still running: its parent run stays RUNNING.
    first = start_worker(server, tmp_path / "logs", "w1", "--max-trials", "2")
    try:
        assert first.wait(timeout=120) == 0
    finally:
        stop_workers([first])
    exported = export(client, experiment_id, uri, artifact_location=artifacts)
    tracking = MlflowClient(tracking_uri=uri)
    assert (exported.logged, exported.skipped) == (2, 0)
    assert exported.experiment_name == f"{spec['name']}-{experiment_id}"
    assert tracking.get_run(exported.parent_run_id).info.status == "RUNNING"
    # As an export cut off before it ended a trial's run would leave it.
    cut_off = children(tracking, exported)[0]
    tracking.update_run(cut_off.info.run_id, status="RUNNING")

    rest = start_worker(server, tmp_path / "logs", "w2")
    try:
        experiment = wait_for_end(client, experiment_id, timeout=120)
    finally:
        stop_workers([rest])
    trials = list(client.all_trials(experiment_id))
    assert sorted(t["state"] for t in trials) == ["completed", "completed", "failed", "pruned"]
    again = export(client, experiment_id, uri, artifact_location=artifacts)
    assert (again.logged, again.skipped) == (3, 1)  # the cut-off run logged anew
    assert again.parent_run_id == exported.parent_run_id

    parent = tracking.get_run(again.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[EXPERIMENT_TAG] == str(experiment_id)
    assert parent.data.tags["sweep.objectives"] == "val_accuracy maximize"
    assert parent.data.params == {key: str(value) for key, value in spec["fixed"].items()}
    assert parent.data.metrics["best_value"] == experiment["best_value"]
    runs = {int(run.data.tags[TRIAL_TAG]): run for run in children(tracking, again)}
    assert sorted(runs) == sorted(t["id"] for t in trials)
    for trial in trials:
        assert_run_is_the_trial(client, tracking, runs[trial["id"]], trial["id"], tmp_path)

    # Once more, from the command line: nothing new, nothing duplicated.
    command = [sys.executable, "-m", "sweep.cli", "export", str(experiment_id)]
    command += ["--to", f"mlflow:{uri}", "--artifacts", artifacts, "--server", server.url]
    env = {**os.environ, "SWEEP_TOKEN": server.admin_token}
    printed = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    assert f"0 trial runs logged (4 logged before) under run {again.parent_run_id}" in " ".join(
        printed.stdout.split()
    )
    assert len(tracking.search_runs([again.experiment_id])) == 5
    print(f"\nMLflow export of 4 trials, run and exported twice: {time.monotonic() - started:.1f}s")


def children(tracking: MlflowClient, exported: Exported) -> list[Any]:
    query = f"tags.`{PARENT_TAG}` = '{exported.parent_run_id}'"
    return list(tracking.search_runs([exported.experiment_id], query))


def assert_run_is_the_trial(
    client: SweepClient, tracking: MlflowClient, run: Any, trial_id: int, tmp_path: Path
) -> None:
    trial = client.trial(trial_id)
    run_id = run.info.run_id
    assert run.info.status == STATUS[trial["state"]]
    assert run.data.tags["sweep.state"] == trial["state"]
    assert run.data.tags["sweep.trial_number"] == str(trial["number"])
    assert run.data.params == {key: str(value) for key, value in trial["config"].items()}
    names = {name for report in trial["metrics"] for name in report["values"]}
    assert "val_accuracy" in names or trial["state"] == "failed"  # diverged in its first epoch
    for name in names:
        history = sorted(tracking.get_metric_history(run_id, name), key=lambda m: m.step)
        expected = [(m["epoch"], m["values"][name]) for m in trial["metrics"]]
        assert [(m.step, m.value) for m in history] == expected
    assert run.data.metrics.get("sweep.value") == trial["value"]
    if trial["state"] == "failed":
        assert run.data.tags["sweep.failure_reason"] == trial["failure_reason"] == "diverged"
    files = {f.path for f in tracking.list_artifacts(run_id)}
    assert ("model.pt" in files) == trial["has_weights"] == (trial["state"] == "completed")
    if trial["has_weights"]:
        logged = Path(tracking.download_artifacts(run_id, "model.pt", str(tmp_path)))
        served = client.download_model(trial_id, tmp_path / "served.pt")
        assert logged.read_bytes() == served.read_bytes()


def test_a_value_too_long_for_an_mlflow_param_is_cut_and_named() -> None:
    params, cut = _params({"note": "x" * 600, "lr": 0.1, "layers": [64, 32]})
    assert [(p.key, p.value) for p in params] == [
        ("note", "x" * 497 + "..."),
        ("lr", "0.1"),
        ("layers", "[64, 32]"),
    ]
    assert cut == ["note"]
