"""Several trials per host: a pool of worker processes, one trial each, crashes kept apart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import assert_metrics_intact, budget, make_spec, wait_for_end, wait_until
from tests.processes import serve

pytestmark = pytest.mark.processes  # real server, worker or pool processes


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in found.split()]


@pytest.mark.timeout(300)
def test_a_pool_runs_trials_side_by_side_and_outlives_a_crashed_process(
    sqlite_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server, client = serve(
        request,
        sqlite_url,
        tmp_path / "logs",
        env={"SWEEP_LEASE_SECONDS": "3", "SWEEP_LEASE_CHECK_SECONDS": "0.5"},
    )
    spec = make_spec(
        fixed={"epochs": 6, "checkpoint_every": 2}, pruner={"name": "none"}, budget=budget(8, 2)
    )
    experiment_id = client.submit(spec)["id"]
    log = (tmp_path / "pool.log").open("wb")
    pool = subprocess.Popen(
        [
            sys.executable,
            *("-m", "sweep.cli", "worker", "--server", server.url),
            *("--devices", "cpu", "--trials-per-device", "2", "--exit-when-idle", "3"),
        ],
        env={**os.environ, "SWEEP_TOKEN": server.worker_token},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while client.experiment(experiment_id)["counts"]["running"] < 2:
            assert time.monotonic() < deadline, "the pool never ran two trials at once"
            time.sleep(0.1)
        first, _ = sorted(children(pool.pid))
        os.kill(first, signal.SIGKILL)  # one trial's process dies; its neighbour goes on
        experiment = wait_for_end(client, experiment_id, timeout=240)
        pool.wait(timeout=60)
    finally:
        if pool.poll() is None:
            pool.send_signal(signal.SIGTERM)
            pool.wait(timeout=60)
        log.close()

    output = (tmp_path / "pool.log").read_text()
    assert pool.returncode == 0, output[-3000:]
    assert "exited with -9; starting it again" in output
    assert experiment["state"] == "completed" and experiment["counts"]["completed"] == 8
    details = assert_metrics_intact(client, experiment_id)
    assert max(t["attempt"] for t in details) == 2  # the killed trial ran again, once
    names = sorted(w["name"].rsplit("-", 2)[-2:] for w in client.workers())
    assert names == [["cpu", "0"], ["cpu", "0"], ["cpu", "1"]]  # two slots, one started again


@pytest.mark.timeout(300)
def test_a_trial_out_of_memory_makes_the_pool_run_one_process_fewer(
    sqlite_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server, client = serve(request, sqlite_url, tmp_path / "logs")
    spec = make_spec(
        search_space={
            "hidden_units": {"type": "categorical", "choices": [32, 8192]},
            "hidden_layers": {"type": "int", "low": 1, "high": 16},
            "lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
        },
        fixed={"epochs": 2},
        pruner={"name": "none"},
        budget=budget(4, 2),
    )
    experiment_id = client.submit(spec)["id"]
    # 16 layers of 8192 units want 4 GiB of weights: more than the pool's 3 GiB address space.
    configs = [(8192, 16, 0.01), (32, 1, 0.01), (32, 1, 0.02), (32, 1, 0.03)]
    for units, layers, lr in configs:
        params = {"hidden_units": units, "hidden_layers": layers, "lr": lr}
        client.enqueue(experiment_id, params)
    log = tmp_path / "pool.log"
    out = log.open("wb")
    pool = subprocess.Popen(
        [
            *("prlimit", f"--as={3 * 2**30}", sys.executable),
            *("-m", "sweep.cli", "worker", "--server", server.url),
            *("--devices", "cpu", "--trials-per-device", "2"),
        ],
        env={**os.environ, "SWEEP_TOKEN": server.worker_token},
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    shrunk = "ran out of memory: 1 trials at once on cpu from now on"
    try:
        wait_for_end(client, experiment_id, timeout=240)
        wait_until(lambda: shrunk in log.read_text(), 30, "the pool to shrink")
    finally:
        pool.send_signal(signal.SIGTERM)
        pool.wait(timeout=60)
        out.close()
    output = log.read_text()
    assert pool.returncode == 0, output[-3000:]
    assert shrunk in output, output[-3000:]
    trials = client.trials(experiment_id)["items"]
    assert [(t["params"]["hidden_units"], t["state"], t["failure_reason"]) for t in trials] == [
        (8192, "failed", "oom"),
        (32, "completed", None),
        (32, "completed", None),
        (32, "completed", None),
    ]
    assert client.experiment(experiment_id)["state"] == "completed"
