"""Claim latency against history size, next to Optuna's own in-memory ask, in one run; and
the memory the cached studies take, with and without a bound on how many are kept.

    .venv/bin/python benchmarks/claim_latency.py [--sizes 100 1000 5000 10000]
        [--trial-seconds 0.2] [--database-url URL]
        [--memory-experiments 50 --memory-trials 1000 --memory-bound 10] [--skip-memory]

Latency: for each history size, one experiment gets that many finished trials (written to SQL
directly, as if a sweep had run), then claims are timed, each followed by an untimed
completion and a pause of --trial-seconds (the trial's training). The first claims rebuild
the study from SQL and are not timed. It is done twice, in fresh apps: with the sampler asked
during each claim (SWEEP_ASK_AHEAD_AFTER=off) and with each suggestion asked ahead, in the
background after the claim before it (SWEEP_ASK_AHEAD_AFTER=0). For the same search space,
TPE's ask on a plain in-memory Optuna study holding the same finished trials is timed in the
same run. It prints p50/p99 of each, the overhead (claim asked at the claim - ask), and the
p50 of GET /healthz (one request with one database round trip: the floor any API call pays).
The app runs in process on a SQLite file by default; --server URL times a running `sweep
server` over real HTTP instead (latency only, with that server's own setting).

Memory: in a fresh process per setting, an app caches the studies of N experiments of M
finished trials each (one claim each), and the process's resident memory is read before and
after: unbounded (SWEEP_MAX_CACHED_STUDIES above N) and bounded (--memory-bound).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import random
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from sweep.service import auth
from sweep.service.app import create_app
from sweep.service.config import Settings
from sweep.service.db import Database
from sweep.service.schemas import TokenCreate
from sweep.service.states import TrialState
from sweep.service.tables import Experiment, Trial

SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
    "batch_size": {"type": "categorical", "choices": [16, 32, 64, 128]},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam", "rmsprop"]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "hidden_units": {"type": "int", "low": 32, "high": 256, "log": True},
}
DISTRIBUTIONS = {
    "lr": FloatDistribution(1e-4, 0.3, log=True),
    "batch_size": CategoricalDistribution([16, 32, 64, 128]),
    "optimizer": CategoricalDistribution(["sgd", "adam", "rmsprop"]),
    "dropout": FloatDistribution(0.0, 0.5),
    "hidden_units": IntDistribution(32, 256, log=True),
}
TIMED, WARM_UP = 50, 3


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


def history(n: int, seed: int) -> list[tuple[dict[str, Any], float]]:
    """n finished trials' params and values, the same for the service and for Optuna."""
    rng = random.Random(seed)
    return [
        (
            {
                "lr": 10 ** rng.uniform(-4, -0.53),
                "batch_size": rng.choice([16, 32, 64, 128]),
                "optimizer": rng.choice(["sgd", "adam", "rmsprop"]),
                "dropout": rng.uniform(0, 0.5),
                "hidden_units": rng.randint(32, 256),
            },
            rng.random(),
        )
        for _ in range(n)
    ]


def fill(db: Database, experiment_id: int, trials: list[tuple[dict[str, Any], float]]) -> None:
    """Write finished trials straight to SQL, numbered and sequenced as a sweep leaves them."""
    with db.transaction() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        for number, (params, value) in enumerate(trials):
            session.add(
                Trial(
                    experiment_id=experiment_id,
                    number=number,
                    state=TrialState.COMPLETED,
                    params=params,
                    system_attrs={},
                    value=value,
                    values=[value],
                    last_epoch=1,
                    finish_seq=number + 1,
                    attempt=1,
                    retries=0,
                    has_weights=False,
                )
            )
        experiment.trial_count = experiment.finish_seq = len(trials)
        experiment.n_trials = len(trials) + WARM_UP + TIMED


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


def claim_latencies(client: httpx.Client, worker: int, trial_seconds: float) -> list[float]:
    rng, timings = random.Random(0), []
    for i in range(WARM_UP + TIMED):
        time.sleep(trial_seconds)  # the previous trial's training
        started = time.perf_counter()
        response = client.post(f"/api/v1/workers/{worker}/claim", json={})
        if i >= WARM_UP:
            timings.append(time.perf_counter() - started)
        trial = response.raise_for_status().json()
        client.post(
            f"/api/v1/trials/{trial['trial_id']}/complete",
            json={"value": rng.random()},
            headers={"X-Attempt-Token": trial["token"]},
        ).raise_for_status()
    return timings


def ask_latencies(trials: list[tuple[dict[str, Any], float]]) -> list[float]:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=1))
    study.add_trials(
        optuna.trial.create_trial(params=params, distributions=DISTRIBUTIONS, value=value)
        for params, value in trials
    )
    rng, timings = random.Random(0), []
    for i in range(WARM_UP + TIMED):
        started = time.perf_counter()
        trial = study.ask(fixed_distributions=DISTRIBUTIONS)
        if i >= WARM_UP:
            timings.append(time.perf_counter() - started)
        study.tell(trial, rng.random())
    return timings


def latency(args: argparse.Namespace) -> None:
    print(
        f"{'history':>8} {'claim p50':>10} {'p99':>8} {'ahead p50':>10} {'p99':>8} "
        f"{'ask p50':>9} {'p99':>8} {'overhead p50':>13} {'p99':>8} {'healthz p50':>12}   (ms)",
        flush=True,
    )
    for size in args.sizes:
        trials = history(size, seed=size)
        claims, floor = {}, 0.0
        for ahead in (None, 0) if not args.server else (None,):
            with (
                tempfile.TemporaryDirectory() as tmp,
                connect(args, Path(tmp), ahead) as (
                    client,
                    db,
                ),
            ):
                experiment_id = client.post("/api/v1/experiments", json=spec(size)).json()["id"]
                if db is None:  # a remote server: its history comes from real claims
                    raise SystemExit("--server needs the history filled through its database")
                fill(db, experiment_id, trials)
                worker = client.post("/api/v1/workers", json={"name": "bench"}).json()["id"]
                claims[ahead] = percentiles(claim_latencies(client, worker, args.trial_seconds))
                floor = healthz_p50(client)
        ask50, ask99 = percentiles(ask_latencies(trials))
        (claim50, claim99), (ahead50, ahead99) = claims[None], claims.get(0, (math.nan,) * 2)
        print(
            f"{size:>8} {claim50:>10.2f} {claim99:>8.2f} {ahead50:>10.2f} {ahead99:>8.2f} "
            f"{ask50:>9.2f} {ask99:>8.2f} {claim50 - ask50:>13.2f} {claim99 - ask99:>8.2f} "
            f"{floor:>12.2f}",
            flush=True,
        )


def resident_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cache_memory(database_url: str, experiments: int, bound: int, out: Any) -> None:
    """In a fresh process: claim once in each experiment and report the memory it took."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = Settings(database_url=database_url, max_cached_studies=bound)
    with TestClient(create_app(settings)) as client:
        authorize(client)
        worker = client.post("/api/v1/workers", json={"name": "mem"}).json()["id"]
        before = resident_mib()
        started = time.perf_counter()
        for experiment_id in range(1, experiments + 1):
            response = client.post(
                f"/api/v1/workers/{worker}/claim", json={"experiment_id": experiment_id}
            )
            trial = response.raise_for_status().json()
            client.post(
                f"/api/v1/trials/{trial['trial_id']}/release",
                headers={"X-Attempt-Token": trial["token"]},
            ).raise_for_status()
        seconds = time.perf_counter() - started
        cached = client.app.state.optimizer.cached()  # type: ignore[attr-defined]
        out.put((resident_mib() - before, cached, seconds))


def memory(args: argparse.Namespace) -> None:
    n, m = args.memory_experiments, args.memory_trials
    print(f"\nMemory: {n} experiments x {m} finished trials, one claim each", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'memory.db'}"
        with TestClient(create_app(Settings(database_url=url))) as client:
            authorize(client)
            db = client.app.state.db  # type: ignore[attr-defined]
            for i in range(n):
                experiment_id = client.post("/api/v1/experiments", json=spec(m)).json()["id"]
                fill(db, experiment_id, history(m, seed=i))
        print(f"{'cache bound':>12} {'studies held':>13} {'RSS growth MiB':>15} {'s':>6}")
        context = multiprocessing.get_context("spawn")
        for bound in (n * 2, args.memory_bound):
            copy = Path(tmp) / f"memory-{bound}.db"  # each run starts from the same rows
            shutil.copy(Path(tmp) / "memory.db", copy)
            out = context.Queue()
            child = context.Process(target=cache_memory, args=(f"sqlite:///{copy}", n, bound, out))
            child.start()
            grown, cached, seconds = out.get()
            child.join()
            print(f"{bound:>12} {cached:>13} {grown:>15.1f} {seconds:>6.1f}", flush=True)


def authorize(client: TestClient) -> None:
    with client.app.state.db.transaction() as session:  # type: ignore[attr-defined]
        secret, _ = auth.create(session, body=TokenCreate(role="admin"))
    client.headers["Authorization"] = f"Bearer {secret}"


@contextmanager
def connect(
    args: argparse.Namespace, tmp: Path, ask_ahead_after: int | None
) -> Iterator[tuple[httpx.Client, Database | None]]:
    if args.server:
        headers = {"Authorization": f"Bearer {args.token}"}
        with httpx.Client(base_url=args.server, timeout=60, headers=headers) as client:
            yield client, None
        return
    url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    settings = Settings(database_url=url, ask_ahead_after=ask_ahead_after)
    with TestClient(create_app(settings)) as client:
        authorize(client)
        yield client, client.app.state.db  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000, 10000])
    parser.add_argument(
        "--trial-seconds", type=float, default=0.2, help="pause after each completion"
    )
    parser.add_argument("--database-url", default="", help="in-process app's database")
    parser.add_argument("--server", default="", help="time this running server instead")
    parser.add_argument(
        "--token",
        default=os.environ.get("SWEEP_TOKEN", ""),
        help="an admin token for --server (default: SWEEP_TOKEN)",
    )
    parser.add_argument("--memory-experiments", type=int, default=50)
    parser.add_argument("--memory-trials", type=int, default=1000)
    parser.add_argument("--memory-bound", type=int, default=10)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not args.skip_latency:
        latency(args)
    if not args.skip_memory:
        memory(args)


if __name__ == "__main__":
    main()
