"""The path the docs walk a new user along, end to end with real processes: upload a CSV, sweep
on it with two workers, open the result as an Optuna study, export it for optuna-dashboard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from sweep.client import SweepClient
from tests.helpers import wine_csv
from tests.processes import serve, start_worker, stop_workers

pytestmark = pytest.mark.processes  # real server, worker or pool processes

SPEC = """\
name: wine-from-csv
model: mlp
dataset: {name: wine, val_fraction: 0.25, split_seed: 1}
objective: {metric: val_accuracy, direction: maximize}
search_space:
  lr:      {type: float, low: 0.001, high: 0.1, log: true}
  dropout: {type: float, low: 0.0, high: 0.3}
fixed: {epochs: 6, hidden_layers: 1}
sampler: {name: tpe, seed: 0}
pruner: {name: none}
budget: {n_trials: 6, max_concurrent: 2}
"""


def test_csv_to_sweep_to_notebook_to_dashboard(
    request: pytest.FixtureRequest, sqlite_url: str, tmp_path: Path
) -> None:
    server, _ = serve(request, sqlite_url, tmp_path / "logs")
    user = (
        subprocess.run(
            [sys.executable, "-m", "sweep.cli", "token", "create", "--role", "user"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "SWEEP_DATABASE_URL": sqlite_url},
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    env = {**os.environ, "SWEEP_TOKEN": user, "SWEEP_SERVER": server.url, "COLUMNS": "200"}

    def sweep(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "sweep.cli", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    (tmp_path / "wine.csv").write_bytes(wine_csv())
    # "wine" is bundled; the user's upload is named "wine-csv" and the spec says so.
    said = sweep("dataset", "upload", "wine.csv", "--name", "wine-csv", "--target", "cultivar")
    assert "classification, 178 samples x 13 features, 3 classes" in said
    (tmp_path / "spec.yaml").write_text(SPEC.replace("name: wine,", "name: wine-csv,"))
    assert "submitted" in sweep("submit", "spec.yaml")

    workers = [start_worker(server, tmp_path / "logs", f"w{i}") for i in range(2)]
    client = SweepClient(server.url, token=user)
    request.addfinalizer(client.close)
    try:
        [experiment] = client.experiments()["items"]
        done = client.wait(experiment["id"], timeout=180, poll=0.5)
    finally:
        stop_workers(workers)
    assert done["state"] == "completed" and done["counts"]["completed"] == 6
    assert {t["worker_id"] for t in client.all_trials(done["id"])} == {1, 2}  # both worked

    study = client.to_optuna_study(done["id"])  # in a notebook
    assert len(study.trials) == 6 and study.best_value == done["best_value"]
    assert all(len(t.intermediate_values) == 6 for t in study.trials)
    assert optuna.visualization.plot_param_importances(study).data

    target = f"sqlite:///{tmp_path / 'dashboard.db'}"
    assert "6 trials written" in sweep("export", str(done["id"]), "--to", target)
    exported = optuna.load_study(study_name=f"wine-from-csv-{done['id']}", storage=target)
    assert len(exported.trials) == 6 and exported.best_value == done["best_value"]
