"""Many short trials: Sweep on SQLite and on PostgreSQL beside plain Optuna on PostgreSQL.

    .venv/bin/python benchmarks/short_trials.py [--trials 300] [--concurrent 2] [--epochs 1]
        [--seeds 0 1 2] [--sides optuna sweep-sqlite sweep-postgresql] [--keep-models K]
        [--server-workers 1] [--ask-ahead-after N] [--pg URL] [--json FILE]

Real training, where the control plane weighs most: each trial trains a tiny MLP (16 hidden
units) on digits for --epochs epochs, so a trial takes tens of milliseconds and the service's
cost per trial shows. Every side trains with the same code (sweep.worker.train.train_trial on
the same dataset split), asks the same sampler (TPE, seeded) over the same search space, and
hears the same pruner (Sweep's default); --concurrent trials at once:

- optuna: --concurrent processes, each running `study.optimize` on one study in an RDBStorage
  on a fresh PostgreSQL database (Optuna's own recipe for parallel optimisation), the
  objective reporting each epoch and asking should_prune;
- sweep-sqlite / sweep-postgresql: one real `sweep server` (--server-workers API processes)
  on a fresh SQLite file or PostgreSQL database and one worker pool of --concurrent
  processes (`sweep worker --devices cpu --trials-per-device N`).

Every process gets one torch thread. The clock starts once every process is ready (Optuna's
have loaded the data and the study and built a first optimizer; Sweep's workers have
registered, and build theirs meanwhile) and stops when the last trial has ended: Optuna
when its processes return, Sweep when its experiment completes. Per seed, sides run one after
the other; printed: seconds, trials/s, each side against Optuna in the same seed, and the best
val_accuracy each side found. The machine may be shared and small: compare within a seed.

Also printed: the CPU time each side's processes used while timed, in milliseconds per trial:
the processes that train (Optuna's, or Sweep's workers; training included), Sweep's server,
and the PostgreSQL backends of the side's database; and the share of the training processes'
time spent in training passes (their `epoch_seconds`, summed over every epoch, against
--concurrent times the seconds), the rest going to the sampler, storage and the service.

Sweep keeps every trial's model file by default, which Optuna does not do at all; with
--keep-models K its experiments keep the K best (`artifacts.keep_models`), and a trial that
cannot be among them does not send its model. With --ask-ahead-after N
(SWEEP_ASK_AHEAD_AFTER; 1,000 by default), from trial N on the server asks suggestions ahead
and a worker claims its next trial before it tells the last one's end.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import optuna
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.control_plane import (
    PG_ADMIN,
    cpu_snapshot,
    cpu_used,
    descendants,
    fresh_database,
    sweep_server,
)
from sweep.service.config import Settings
from tests.processes import ServerProcess

SIDES = ("optuna", "sweep-sqlite", "sweep-postgresql")
# Reads of the experiment are answered the moment it ends, or after a second.
WAIT = {"wait": 1}
SPACE: dict[str, Any] = {
    "lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
    "batch_size": {"type": "categorical", "choices": [32, 64, 128]},
    "optimizer": {"type": "categorical", "choices": ["sgd", "momentum", "adam"]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3},
}


def spec(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The experiment every side runs (Sweep's spec; Optuna's side reads the same one)."""
    body: dict[str, Any] = {
        "name": f"short-trials-{seed}",
        "model": "mlp",
        "dataset": "digits",
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "search_space": SPACE,
        "fixed": {"epochs": args.epochs, "hidden_units": 16, "checkpoint_every": 0},
        "sampler": {"name": "tpe", "seed": seed},
        "budget": {"n_trials": args.trials, "max_concurrent": args.concurrent},
    }
    if args.keep_models is not None:
        body["artifacts"] = {"keep_models": args.keep_models}
    return body


# --- optuna ---------------------------------------------------------------------------------


def optuna_process(
    storage: str,
    study_name: str,
    body: dict[str, Any],
    n_trials: int,
    signals: tuple[Any, Any, Any, Any],
    training: Any,
) -> None:
    """One of Optuna's processes: the same training code and data as Sweep's workers. It says
    when it is ready and when it is done, and stays until told to leave (its CPU time and its
    PostgreSQL backend's are read meanwhile). Its training passes' seconds go in `training`."""
    ready, go, finished, leave = signals
    import torch

    from sweep.models import catalog, datasets
    from sweep.service import search, specs
    from sweep.service.schemas import ExperimentCreate
    from sweep.service.search.optimizer import directions, suggest_all
    from sweep.service.search.space import distributions
    from sweep.worker.train import Pruned, TrialConfig, to_device, train_trial, warm_up

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    normalized = specs.normalize(ExperimentCreate.model_validate(body))
    device = torch.device("cpu")
    data = to_device(datasets.for_spec(normalized["dataset"]), device)
    warm_up()  # as Sweep's workers do while they register
    dists = distributions(normalized["search_space"])
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        sampler=search.make_sampler(normalized),
        pruner=search.make_pruner(normalized["pruner"]),
        directions=directions(normalized),
        load_if_exists=True,
    )

    def objective(trial: optuna.Trial) -> float:
        params = suggest_all(trial, dists, normalized)
        config = TrialConfig(
            model=normalized["model"],
            dataset=normalized["dataset"],
            hparams=catalog.resolve_hyperparameters(
                normalized["model"], {**normalized["fixed"], **params}
            ),
            objective_metric="val_accuracy",
            direction="maximize",
            reduce=normalized["objective"]["reduce"],
            number=trial.number,
        )

        def report(epoch: int, metrics: dict[str, float]) -> None:
            training.value += metrics["epoch_seconds"]
            trial.report(metrics["val_accuracy"], epoch)
            if trial.should_prune():
                raise Pruned(f"pruned at epoch {epoch}")

        try:
            return train_trial(config, data, device, report).value
        except Pruned as exc:
            raise optuna.TrialPruned() from exc

    ready.release()
    go.wait()
    study.optimize(objective, n_trials=n_trials)
    finished.release()
    leave.wait()


def run_optuna(
    args: argparse.Namespace, seed: int, admin: psycopg.Connection[Any]
) -> dict[str, Any]:
    body = spec(args, seed)
    context = multiprocessing.get_context("spawn")
    with fresh_database(admin, args.pg) as (database, url):
        storage, name = url, body["name"]
        optuna.create_study(storage=storage, study_name=name, direction="maximize")
        shares = [args.trials // args.concurrent] * args.concurrent
        shares[0] += args.trials - sum(shares)
        ready, go = context.Semaphore(0), context.Event()
        finished, leave = context.Semaphore(0), context.Event()
        training = [context.Value("d", 0.0) for _ in shares]
        processes = [
            context.Process(
                target=optuna_process,
                args=(storage, name, body, n, (ready, go, finished, leave), seconds),
            )
            for n, seconds in zip(shares, training, strict=True)
        ]
        for process in processes:
            process.start()
        try:
            _wait_all(ready, processes)
            before = cpu_snapshot(admin, database, [p.pid for p in processes if p.pid], [])
            started = time.perf_counter()
            go.set()
            _wait_all(finished, processes)
            elapsed = time.perf_counter() - started
            after = cpu_snapshot(admin, database, [p.pid for p in processes if p.pid], [])
        finally:
            leave.set()
            for process in processes:
                process.join()
        if any(p.exitcode != 0 for p in processes):
            raise RuntimeError("an Optuna process failed")
        study = optuna.load_study(study_name=name, storage=storage)
        done = study.get_trials(deepcopy=False)
        completed = [t.value for t in done if t.value is not None and t.state.name == "COMPLETE"]
        pruned = sum(t.state.name == "PRUNED" for t in done)
    return {
        "seconds": elapsed,
        "best": max(completed),
        "pruned": pruned,
        "trials": len(done),
        "cpu": cpu_used(before, after),
        "training": sum(seconds.value for seconds in training),
    }


def _wait_all(signal: Any, processes: list[Any]) -> None:
    """Wait until every process has released `signal`; RuntimeError if one died first."""
    for _ in processes:
        while not signal.acquire(timeout=1):
            if any(p.exitcode is not None for p in processes):
                raise RuntimeError("an Optuna process ended early")


# --- sweep ----------------------------------------------------------------------------------


def run_sweep(
    args: argparse.Namespace,
    seed: int,
    server: ServerProcess,
    admin: psycopg.Connection[Any],
    database: str = "",
) -> dict[str, Any]:
    """Sweep's run; CPU is read from the server, the worker pool's processes and the
    PostgreSQL backends of `database` (none for SQLite)."""
    assert server.process is not None
    server_pids = [server.process.pid, *descendants(server.process.pid)]
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=f"{server.url}/api/v1", headers=headers, timeout=60) as http:
        pool = subprocess.Popen(
            [
                sys.executable,
                *("-m", "sweep.cli", "worker", "--server", server.url),
                *("--devices", "cpu", "--trials-per-device", str(args.concurrent)),
                *("--threads", "1", "--exit-when-idle", "3"),
            ],
            env={**os.environ, "SWEEP_TOKEN": server.worker_token},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while len(http.get("/workers").json()) < args.concurrent:
                if pool.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the worker pool did not start")
                time.sleep(0.05)
            workers = [pool.pid, *descendants(pool.pid)]
            before = cpu_snapshot(admin, database, workers, server_pids)
            started = time.perf_counter()
            experiment_id = http.post("/experiments", json=spec(args, seed)).json()["id"]
            while (experiment := http.get(f"/experiments/{experiment_id}", params=WAIT).json())[
                "state"
            ] != "completed":
                if pool.poll() is not None:
                    raise RuntimeError(f"the worker pool exited early ({pool.returncode})")
            elapsed = time.perf_counter() - started
            after = cpu_snapshot(admin, database, workers, server_pids)  # before they go idle
            pool.wait(timeout=120)
        finally:
            if pool.poll() is None:
                pool.terminate()
                pool.wait(timeout=60)
        training = _epoch_seconds(http, experiment_id)
    return {
        "seconds": elapsed,
        "best": experiment["best_value"],
        "pruned": experiment["counts"]["pruned"],
        "trials": experiment["trials_created"],
        "cpu": cpu_used(before, after),
        "training": training,
    }


def _epoch_seconds(http: httpx.Client, experiment_id: int) -> float:
    """The seconds of every training pass an experiment's trials reported."""
    path = f"/experiments/{experiment_id}"
    numbers: list[int] = []
    while True:
        params = {"limit": 1000, "offset": len(numbers)}
        page = http.get(f"{path}/trials", params=params).json()["items"]
        if not page:
            break
        numbers += [t["number"] for t in page]
    total = 0.0
    for start in range(0, len(numbers), 50):
        wanted: dict[str, Any] = {"metric": "epoch_seconds", "trial": numbers[start : start + 50]}
        for curve in http.get(f"{path}/curves", params=wanted).json()["curves"]:
            total += sum(v for v in curve["values"] if v is not None)
    return total


def run_side(
    side: str, args: argparse.Namespace, seed: int, admin: psycopg.Connection[Any], tmp: Path
) -> dict[str, Any]:
    if side == "optuna":
        return run_optuna(args, seed, admin)
    if side == "sweep-sqlite":
        sqlite = f"sqlite:///{tmp / f'sweep-{seed}.db'}"
        with sweep_server(sqlite, args.server_workers, tmp / f"logs-{seed}") as s:
            return run_sweep(args, seed, s, admin)
    with (
        fresh_database(admin, args.pg) as (database, url),
        sweep_server(url, args.server_workers, tmp / f"logs-pg-{seed}") as server,
    ):
        return run_sweep(args, seed, server, admin, database)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--server-workers", type=int, default=1, help="Sweep's API processes")
    parser.add_argument(
        "--keep-models", type=int, help="Sweep keeps the models of this many best trials only"
    )
    parser.add_argument(
        "--ask-ahead-after", help="Sweep's SWEEP_ASK_AHEAD_AFTER (a number of trials, or off)"
    )
    parser.add_argument("--pg", default=PG_ADMIN, help="PostgreSQL to make databases on")
    parser.add_argument("--json", type=Path, help="also write every run here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.ask_ahead_after is not None:  # Sweep's servers inherit it
        os.environ["SWEEP_ASK_AHEAD_AFTER"] = args.ask_ahead_after
    ahead = Settings().ask_ahead_after
    print(
        f"{args.trials} trials x {args.epochs} epoch(s) of a 16-unit MLP on digits, "
        f"{args.concurrent} at once, TPE and Sweep's default pruner; Sweep keeps "
        + ("every model" if args.keep_models is None else f"{args.keep_models} best models")
        + f" and asks ahead from trial {ahead}",
        flush=True,
    )
    print(
        f"{'seed':>4} {'side':>17} {'seconds':>8} {'trials/s':>9} {'vs optuna':>9} {'best':>7}"
        f"  CPU ms per trial: {'trainers':>8} {'server':>6} {'postgres':>8}  training"
    )
    runs: list[dict[str, Any]] = []
    with (
        psycopg.connect(args.pg, autocommit=True) as admin,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for seed in args.seeds:
            baseline = None
            for side in args.sides:
                run = run_side(side, args, seed, admin, Path(tmp)) | {"seed": seed, "side": side}
                runs.append(run)
                rate = run["trials"] / run["seconds"]
                if side == "optuna":
                    baseline = rate
                ratio = f"{rate / baseline:9.2f}" if baseline else f"{'-':>9}"
                cpu = {k: 1000 * v / run["trials"] for k, v in run["cpu"].items()}
                training = run["training"] / (args.concurrent * run["seconds"])
                print(
                    f"{seed:>4} {side:>17} {run['seconds']:8.1f} {rate:9.2f} {ratio} "
                    f"{run['best']:7.4f}  {'':>17} {cpu['clients']:8.1f} {cpu['server']:6.1f} "
                    f"{cpu['postgres']:8.1f}  {training:8.0%}",
                    flush=True,
                )
    for side in args.sides:
        rates = [r["trials"] / r["seconds"] for r in runs if r["side"] == side]
        print(f"{side}: median {statistics.median(rates):.2f} trials/s over {len(rates)} seed(s)")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
