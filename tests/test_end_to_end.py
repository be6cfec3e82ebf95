"""A real server process and two real worker processes run a digits sweep end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import sweep
from sweep.client import SweepClient
from sweep.models.datasets import for_spec
from sweep.models.registry import build_for_trial
from sweep.worker.train import evaluate, to_device
from tests.helpers import assert_metrics_intact, budget, make_spec, wait_for_end
from tests.processes import ServerProcess, serve, start_worker, stop_workers

pytestmark = pytest.mark.processes  # real server, worker or pool processes

# Long enough that a worker busy beside other tests renews it in time once the server is back.
LEASE = 3

N_TRIALS = 20


@pytest.mark.timeout(300)
def test_digits_sweep_end_to_end(
    server: ServerProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    started = time.monotonic()
    client = SweepClient(server.url, token=server.admin_token)
    request.addfinalizer(client.close)
    spec = make_spec(fixed={"epochs": 12}, budget=budget(N_TRIALS, 4))
    experiment_id = client.submit(spec)["id"]
    workers = [start_worker(server, tmp_path / "logs", f"w{i}") for i in range(2)]
    try:
        experiment = wait_for_end(client, experiment_id, timeout=240)
    finally:
        stop_workers(workers)
    print(f"\n20-trial digits sweep, 2 workers: {time.monotonic() - started:.1f}s")

    assert experiment["state"] == "completed"
    assert experiment["trials_created"] == N_TRIALS
    assert client.trials(experiment_id)["total"] == N_TRIALS
    assert experiment["counts"]["running"] == 0
    assert_metrics_intact(client, experiment_id)
    best = client.best(experiment_id, k=1)["trials"][0]
    assert best["value"] >= 0.95
    assert experiment["best_value"] == best["value"]

    # The best model loads ready to use, and its network into the model built from the
    # trial's params, reproducing its score.
    assert best["name"] == f"{experiment_id}/{best['number']}"  # how users name it
    model = sweep.load_model(best["name"], client)
    detail = client.trial(best["id"])
    network, dataset = build_for_trial(
        spec["model"], experiment["spec"]["dataset"], detail["config"]
    )
    network.load_state_dict(model.network.state_dict())
    metrics = evaluate(network, to_device(dataset, torch.device("cpu")), dataset.task)
    assert metrics["val_accuracy"] == pytest.approx(best["value"], abs=0.01)

    # The CLI shows the same experiment, and saves the model with its record to use offline.
    cli = [sys.executable, "-m", "sweep.cli"]
    env = {**os.environ, "SWEEP_TOKEN": server.admin_token}
    bundle = tmp_path / "best"
    subprocess.run(
        [*cli, "download", best["name"], str(bundle), "--bundle", "--server", server.url],
        check=True,
        env=env,
        capture_output=True,
    )
    record = json.loads((bundle / "trial.json").read_text())
    assert record["trial"]["params"] == best["params"]
    assert record["experiment"]["spec"] == experiment["spec"]
    raw = for_spec({**experiment["spec"]["dataset"], "standardize": False})
    offline = sweep.load_model(bundle)
    assert (offline.predict(raw.X_val) == raw.y_val).mean() == pytest.approx(best["value"])
    status = subprocess.run(
        [*cli, "status", str(experiment_id), "--server", server.url],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    assert "completed" in status and f"{N_TRIALS} of {N_TRIALS}" in status
    top = subprocess.run(
        [*cli, "best", str(experiment_id), "-k", "3", "--server", server.url],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    unauthenticated = subprocess.run(
        [*cli, "status", str(experiment_id), "--server", server.url],
        capture_output=True,
        text=True,
        env={k: v for k, v in env.items() if k != "SWEEP_TOKEN"},
    )
    assert unauthenticated.returncode == 1
    assert unauthenticated.stdout == (
        "error: the server needs an API token: set SWEEP_TOKEN or pass --token\n"
    )
    assert f"{best['value']:.4f}" in top


@pytest.mark.timeout(300)
def test_server_killed_mid_sweep_loses_nothing(
    sqlite_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # Down for twice the lease: the workers keep training and are not robbed of their trials.
    server, client = serve(
        request,
        sqlite_url,
        tmp_path / "logs",
        env={"SWEEP_LEASE_SECONDS": str(LEASE), "SWEEP_LEASE_CHECK_SECONDS": "0.5"},
    )
    spec = make_spec(fixed={"epochs": 8}, budget=budget(12, 2))
    experiment_id = client.submit(spec)["id"]
    workers = [start_worker(server, tmp_path / "logs", f"w{i}") for i in range(2)]
    try:
        deadline = time.monotonic() + 120
        while client.experiment(experiment_id)["trials_created"] < 4:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        server.kill()  # mid-sweep, mid-trial: SIGKILL, nothing gets to clean up
        time.sleep(2 * LEASE)  # the outage itself, not a wait for a state
        server.start()
        experiment = wait_for_end(client, experiment_id, timeout=240)
    finally:
        stop_workers(workers)

    assert experiment["state"] == "completed"
    assert experiment["trials_created"] == 12
    assert sum(experiment["counts"].values()) == 12
    assert experiment["counts"]["running"] == 0
    details = assert_metrics_intact(client, experiment_id)
    assert sum(len(t["metrics"]) for t in details) >= 12
    assert all(w.returncode == 0 for w in workers)  # workers rode out the outage
    assert [t["attempt"] for t in details] == [1] * 12  # no trial was taken from its worker
