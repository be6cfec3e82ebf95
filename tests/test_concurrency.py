"""Claims race from 16 threads through two API processes: the budget and the concurrency cap
hold exactly, and no trial is handed out twice."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from sweep.service.tables import Trial
from tests.helpers import budget, make_spec
from tests.processes import ServerProcess

pytestmark = pytest.mark.processes  # two real API processes

N_THREADS, N_TRIALS, MAX_CONCURRENT = 16, 50, 5


class Observed:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.claims: list[int] = []
        self.intervals: list[tuple[float, float]] = []  # claim answered .. completion sent
        self.errors: list[str] = []


def claimer(server: ServerProcess, experiment_id: int, observed: Observed, seed: int) -> None:
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30, headers=headers) as http:
        worker = http.post("/workers", json={"name": f"t{seed}"}).json()["id"]
        while True:
            response = http.post(f"/workers/{worker}/claim", json={"wait_seconds": 0.2})
            if response.status_code == 204:
                if http.get(f"/experiments/{experiment_id}").json()["state"] == "completed":
                    return
                continue
            if response.status_code != 200:
                observed.errors.append(response.text)
                return
            claimed_at = time.monotonic()
            trial_id, token = response.json()["trial_id"], response.json()["token"]
            time.sleep(rng.uniform(0, 0.02))
            done_at = time.monotonic()
            http.post(
                f"/trials/{trial_id}/complete",
                json={"value": rng.random()},
                headers={"X-Attempt-Token": token},
            )
            with observed.lock:
                observed.claims.append(trial_id)
                observed.intervals.append((claimed_at, done_at))


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


@pytest.mark.timeout(240)
def test_racing_claims_respect_budget_and_cap(db_url: str, tmp_path: Path) -> None:
    servers = [ServerProcess(db_url, tmp_path / f"server{i}") for i in range(2)]
    for server in servers:
        server.start()
    try:
        spec = make_spec(budget=budget(N_TRIALS, MAX_CONCURRENT))
        headers = {"Authorization": f"Bearer {servers[0].admin_token}"}
        experiment_id = httpx.post(
            f"{servers[0].url}/api/v1/experiments", json=spec, headers=headers
        ).json()["id"]
        engine = create_engine(db_url)
        observed, peak = Observed(), [0]
        stop = threading.Event()

        def watch_database() -> None:
            running = select(func.count()).where(Trial.state == "running")
            with engine.connect() as conn:
                while not stop.is_set():
                    peak[0] = max(peak[0], conn.execute(running).scalar_one())
                    conn.rollback()

        watcher = threading.Thread(target=watch_database)
        watcher.start()
        threads = [
            threading.Thread(target=claimer, args=(servers[i % 2], experiment_id, observed, i))
            for i in range(N_THREADS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
        stop.set()
        watcher.join()

        assert observed.errors == []
        assert len(observed.claims) == N_TRIALS
        assert len(set(observed.claims)) == N_TRIALS  # no trial claimed twice
        with engine.connect() as conn:
            numbers = conn.execute(select(Trial.number).order_by(Trial.number)).scalars().all()
        assert numbers == list(range(N_TRIALS))  # exactly n_trials created
        assert peak[0] <= MAX_CONCURRENT  # as seen by the database
        assert max_overlap(observed.intervals) <= MAX_CONCURRENT  # as seen by the workers
        engine.dispose()
    finally:
        for server in servers:
            server.stop()


@pytest.mark.timeout(240)
def test_a_grid_runs_each_point_once_under_eight_racing_workers(
    db_url: str, tmp_path: Path
) -> None:
    servers = [ServerProcess(db_url, tmp_path / f"server{i}") for i in range(2)]
    for server in servers:
        server.start()
    try:
        spec = make_spec(
            search_space={
                "lr": {"type": "categorical", "choices": [0.001, 0.01, 0.1]},
                "hidden_units": {"type": "int", "low": 16, "high": 64, "step": 16},
            },
            sampler={"name": "grid", "seed": 4},
            budget=budget(20, 8),
        )
        headers = {"Authorization": f"Bearer {servers[0].admin_token}"}
        experiment_id = httpx.post(
            f"{servers[0].url}/api/v1/experiments", json=spec, headers=headers
        ).json()["id"]
        observed = Observed()
        threads = [
            threading.Thread(target=claimer, args=(servers[i % 2], experiment_id, observed, i))
            for i in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)

        assert observed.errors == []
        engine = create_engine(db_url)
        with engine.connect() as conn:
            params = conn.execute(select(Trial.params)).scalars().all()
        engine.dispose()
        points = {(p["lr"], p["hidden_units"]) for p in params}
        assert len(params) == 12 and len(points) == 12  # 3 x 4 points, each exactly once
        status = httpx.get(
            f"{servers[0].url}/api/v1/experiments/{experiment_id}", headers=headers
        ).json()
        assert status["state"] == "completed" and status["counts"]["completed"] == 12
    finally:
        for server in servers:
            server.stop()
