"""Claim latency against history size, next to Optuna's own in-memory ask, in one run.

    .venv/bin/python benchmarks/claim_latency.py [--sizes 100 1000] [--database-url URL]

For each history size it fills one experiment with that many finished trials through the real
app, then times claims, and, for the same search space, TPE's ask on a plain in-memory Optuna
study holding the same number of finished trials. It prints p50/p99 of both, the overhead
(claim - ask), and the p50 of GET /healthz (one request with one database round trip: the
floor any API call pays). By default the app runs in process on a SQLite file; --server URL
times a running `sweep server` over real HTTP instead.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import optuna

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from service import auth
from service.app import create_app
from service.config import Settings
from service.schemas import TokenCreate

SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
    "batch_size": {"type": "categorical", "choices": [16, 32, 64, 128]},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam", "rmsprop"]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "hidden_units": {"type": "int", "low": 32, "high": 256, "log": True},
}
TIMED = 50


def spec(n_trials: int) -> dict[str, object]:
    return {
        "name": "bench",
        "model": "mlp",
        "dataset": "digits",
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "search_space": SPACE,
        "sampler": {"name": "tpe", "seed": 1},
        "pruner": {"name": "none"},
        "budget": {"n_trials": n_trials, "max_concurrent": 1},
    }


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[int(len(ordered) * 0.99) - 1] * 1e3


def healthz_p50(client: httpx.Client) -> float:
    timings = []
    for _ in range(TIMED):
        started = time.perf_counter()
        client.get("/api/v1/healthz")
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1e3


def claim_latencies(client: httpx.Client, history: int) -> list[float]:
    client.post("/api/v1/experiments", json=spec(history + TIMED))
    worker = client.post("/api/v1/workers", json={"name": "bench"}).json()["id"]
    rng, timings = random.Random(0), []
    for i in range(history + TIMED):
        started = time.perf_counter()
        response = client.post(f"/api/v1/workers/{worker}/claim", json={})
        if i >= history:
            timings.append(time.perf_counter() - started)
        trial = response.raise_for_status().json()
        client.post(
            f"/api/v1/trials/{trial['trial_id']}/complete",
            json={"value": rng.random()},
            headers={"X-Attempt-Token": trial["token"]},
        ).raise_for_status()
    return timings


def ask_latencies(history: int) -> list[float]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=1))
    rng, timings = random.Random(0), []

    def suggest(trial: optuna.Trial) -> None:
        trial.suggest_float("lr", 1e-4, 0.3, log=True)
        trial.suggest_categorical("batch_size", [16, 32, 64, 128])
        trial.suggest_categorical("optimizer", ["sgd", "adam", "rmsprop"])
        trial.suggest_float("dropout", 0.0, 0.5)
        trial.suggest_int("hidden_units", 32, 256, log=True)

    for i in range(history + TIMED):
        started = time.perf_counter()
        trial = study.ask()
        suggest(trial)
        if i >= history:
            timings.append(time.perf_counter() - started)
        study.tell(trial, rng.random())
    return timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--database-url", default="", help="in-process app's database")
    parser.add_argument("--server", default="", help="time this running server instead")
    parser.add_argument(
        "--token",
        default=os.environ.get("SWEEP_TOKEN", ""),
        help="an admin token for --server (default: SWEEP_TOKEN)",
    )
    args = parser.parse_args()
    print(
        f"{'history':>8} {'claim p50':>10} {'p99':>8} {'ask p50':>9} {'p99':>8} "
        f"{'overhead p50':>13} {'healthz p50':>12}   (ms)"
    )
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp, connect(args, Path(tmp)) as client:
            claim50, claim99 = percentiles(claim_latencies(client, size))
            floor = healthz_p50(client)
        ask50, ask99 = percentiles(ask_latencies(size))
        print(
            f"{size:>8} {claim50:>10.2f} {claim99:>8.2f} {ask50:>9.2f} {ask99:>8.2f} "
            f"{claim50 - ask50:>13.2f} {floor:>12.2f}"
        )


@contextmanager
def connect(args: argparse.Namespace, tmp: Path) -> Iterator[httpx.Client]:
    if args.server:
        headers = {"Authorization": f"Bearer {args.token}"}
        with httpx.Client(base_url=args.server, timeout=60, headers=headers) as client:
            yield client
        return
    url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    with TestClient(create_app(Settings(database_url=url))) as client:
        with client.app.state.db.transaction() as session:  # type: ignore[attr-defined]
            secret, _ = auth.create(session, body=TokenCreate(role="admin"))
        client.headers["Authorization"] = f"Bearer {secret}"
        yield client


if __name__ == "__main__":
    main()
