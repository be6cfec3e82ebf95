"""Chaos: workers killed mid-trial, replaced, and the server killed and restarted, while a
sweep runs. Nothing may be lost, stuck or counted twice."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sweep.client import SweepClient
from tests.helpers import budget, make_spec, wait_until
from tests.processes import ServerProcess, start_worker, stop_workers

pytestmark = pytest.mark.processes  # real server, worker or pool processes

FAST_LEASES = {"SWEEP_LEASE_SECONDS": "4", "SWEEP_LEASE_CHECK_SECONDS": "0.5"}


@dataclass(frozen=True)
class Chaos:
    trials: int
    workers: int
    kills: int  # worker processes killed (each replaced at once)
    server_restarts: int


# Sized to prove the point on two cores: every event lands mid-sweep with trials running, a
# third of the worker processes are killed, and the server goes down more than once.
CHAOS = {
    "postgresql": Chaos(trials=16, workers=4, kills=3, server_restarts=2),
    "sqlite": Chaos(trials=12, workers=4, kills=2, server_restarts=1),
}


class Fleet:
    """Worker processes, some of which get killed and replaced."""

    def __init__(self, server: ServerProcess, logs: Path) -> None:
        self.server, self.logs = server, logs
        self.alive: list[subprocess.Popen[bytes]] = []
        self.all: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        worker = start_worker(self.server, self.logs, f"w{len(self.all)}")
        self.alive.append(worker)
        self.all.append(worker)

    def kill_one(self, client: SweepClient, experiment_id: int, rng: random.Random) -> None:
        """SIGKILL a worker in the middle of a trial that has checkpoints, and replace it."""
        victim = self._mid_trial(client, experiment_id, rng)
        self.alive.remove(victim)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        self.start()

    def _mid_trial(
        self, client: SweepClient, experiment_id: int, rng: random.Random
    ) -> subprocess.Popen[bytes]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            running = client.trials(experiment_id, state="running")["items"]
            busy = {t["worker_id"] for t in running if t["last_epoch"] >= 2}
            pids = {w["pid"] for w in client.workers() if w["id"] in busy}
            candidates = [w for w in self.alive if w.pid in pids]
            if candidates:
                return rng.choice(candidates)
            time.sleep(0.05)
        return rng.choice(self.alive)


@pytest.mark.timeout(600)
def test_sweep_survives_killed_workers_and_server_restarts(
    db_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    chaos = CHAOS["sqlite" if db_url.startswith("sqlite") else "postgresql"]
    rng = random.Random(7)
    server = ServerProcess(db_url, tmp_path / "logs", env=FAST_LEASES)
    server.start()
    fleet = Fleet(server, tmp_path / "logs")
    client = SweepClient(server.url, token=server.admin_token)
    request.addfinalizer(client.close)
    started = time.monotonic()
    try:
        space = make_spec()["search_space"]
        del space["batch_size"]
        spec = make_spec(
            search_space=space,
            # Small batches: epochs long enough that most kills land after a checkpoint, and
            # each epoch's kept unless sending the last one took longer than the epoch.
            fixed={"epochs": 8, "batch_size": 16, "checkpoint_every": 1, "checkpoint_share": 1.0},
            pruner={"name": "none"},
            budget={**budget(chaos.trials, chaos.workers), "max_retries": 10},
        )
        experiment_id = client.submit(spec)["id"]
        for _ in range(chaos.workers):
            fleet.start()
        done = lambda: client.experiment(experiment_id)["state"] == "completed"  # noqa: E731
        # Spread the kills and restarts over the sweep, each once trials are under way.
        events = ["kill"] * chaos.kills + ["restart"] * chaos.server_restarts
        rng.shuffle(events)
        for i, event in enumerate(events, 1):
            progress = i * chaos.trials // (len(events) + 2)
            wait_until(
                lambda p=progress: finished(client, experiment_id) >= p,
                240,
                f"{progress} finished trials",
            )
            if event == "kill":
                fleet.kill_one(client, experiment_id, rng)
            else:
                server.kill()
                time.sleep(1)
                server.start()
        wait_until(done, 300, "the sweep to complete")
        experiment = client.experiment(experiment_id)
        trials = [client.trial(t["id"]) for t in client.trials(experiment_id, limit=1000)["items"]]
    finally:
        stop_workers(fleet.alive)
        server.stop()

    assert experiment["trials_created"] == chaos.trials
    assert len(trials) == chaos.trials
    assert experiment["counts"]["running"] == experiment["counts"]["queued"] == 0
    for trial in trials:  # every curve is whole: epochs 1..last, no gaps, no repeats
        assert [m["epoch"] for m in trial["metrics"]] == list(range(1, trial["last_epoch"] + 1))
    resumed = [t for t in trials if t["attempt"] > 1 and t["resumed_from"] > 0]
    assert any(t["state"] == "completed" for t in resumed), "no trial resumed from a checkpoint"
    lost = [t for t in trials if t["failure_reason"] == "lost"]
    assert lost == [], "a trial was lost more often than max_retries allows"
    retries = sum(t["attempt"] - 1 for t in trials)
    print(
        f"\nchaos on {db_url.split(':')[0]}: {chaos.trials} trials, {len(fleet.all)} worker "
        f"processes, {chaos.kills} killed, {chaos.server_restarts} server restarts, "
        f"{retries} retried attempts, {len(resumed)} resumed from a checkpoint, "
        f"{sum(t['state'] == 'completed' for t in trials)} completed, "
        f"{time.monotonic() - started:.0f}s"
    )


def finished(client: SweepClient, experiment_id: int) -> int:
    counts = client.experiment(experiment_id)["counts"]
    return int(counts["completed"] + counts["pruned"] + counts["failed"])
