"""How much of a worker's time goes into training epochs, on a real sweep of short trials.

    .venv/bin/python benchmarks/worker_utilization.py [--server] [--trials 12]
        [--trial-seconds 1.0] [--batch-size 64] [--checkpoint-every 1]
        [--checkpoint-share 0.05] [--threads 1]

A real sweep (digits, the default MLP, TPE over lr and dropout, no pruner, checkpoints due every
epoch as by default, within the default checkpoint_share) runs through the real app: in process
on a fresh SQLite file by default, or with --server a real `sweep server` process over HTTP. One
real worker loop (sweep.worker.loop) runs in this process on --threads torch threads, one trial
at a time (max_concurrent 1). Epochs are chosen so that a trial's training passes, run alone
before the sweep, take about --trial-seconds (digits trains in ~10 ms an epoch, so about 100
epochs).

Functions of the worker are wrapped here, in this process only, to time every call on the
worker's own (main) thread; each moment is counted once, in the innermost wrapped function ("the
rest" of a function is its time outside the wrapped functions it called). The worker's wall time
runs from the start of its first claim to the end of its last completion. Busy is the share of
it spent on the trials' epochs: training passes (`_train_one_epoch`, what a trial's
epoch_seconds report), each epoch's validation and its latency_ms measurement, the work a trial
is for; training passes alone are printed too. Target: busy >= 0.95 of the wall time. "report"
is Outbox.report on the training thread (before the outbox stopped waiting for answers, it held
training until the service answered). Calls made on other threads (the outbox's reports and
checkpoint uploads, heartbeats) overlap training; their count and median are shown apart. The
server and those threads share this machine's cores with training, so training passes run slower
during the sweep than alone; both speeds are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

import sweep.worker.loop as loop
import sweep.worker.train as train
from sweep.models import catalog
from sweep.models.datasets import load_dataset
from sweep.service.config import Settings
from sweep.service.tokens import create_in_database
from sweep.worker.client import ServiceClient
from sweep.worker.heartbeat import Heartbeat
from sweep.worker.outbox import Outbox

API = "/api/v1"
CPU = torch.device("cpu")
TRAINING = "training pass"
EPOCH_PARTS = (TRAINING, "validation", "latency_ms")


# -------------------------------------------------------------------------------------------
# Timing the worker's functions from outside


@dataclass
class Call:
    name: str
    start: float
    end: float
    own: float  # seconds not spent in a wrapped function it called


@dataclass
class Profile:
    """Wraps functions to record each call: exclusive time on the main thread, whole calls on
    the others."""

    main: list[Call] = field(default_factory=list)
    background: list[Call] = field(default_factory=list)
    _stack: list[list[Any]] = field(default_factory=list)  # [name, start, seconds in children]

    def wrap(self, owner: Any, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is not threading.main_thread():
                started = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    ended = time.perf_counter()
                    self.background.append(Call(name, started, ended, ended - started))
            frame = [name, time.perf_counter(), 0.0]
            self._stack.append(frame)
            try:
                return original(*args, **kwargs)
            finally:
                ended = time.perf_counter()
                self._stack.pop()
                seconds = ended - frame[1]
                if self._stack:
                    self._stack[-1][2] += seconds
                self.main.append(Call(name, frame[1], ended, seconds - frame[2]))

        setattr(owner, attribute, wrapper)


WRAPPED: list[tuple[Any, str, str]] = [
    (loop.Worker, "_claim", "claim"),
    (loop.Worker, "run_trial", "run_trial: the rest"),
    (loop.Worker, "_dataset", "dataset (load or cache)"),
    (ServiceClient, "download_checkpoint", "checkpoint download"),
    (Heartbeat, "__enter__", "heartbeat start"),
    (Heartbeat, "__exit__", "heartbeat stop"),
    (Outbox, "__enter__", "outbox start"),
    (Outbox, "__exit__", "outbox stop"),
    (loop, "train_trial", "train_trial: the rest"),
    (train, "build_model", "model build"),
    (train, "_train_one_epoch", TRAINING),
    (train, "evaluate", "validation"),
    (train, "measure_latency", "latency_ms"),
    (Outbox, "report", "report"),
    (Outbox, "drain", "outbox: wait for delivery"),
    (train._Tracker, "update", "best epoch: copy weights"),
    (train._TrainingState, "snapshot", "checkpoint: copy state"),
    (train.Snapshot, "to_bytes", "checkpoint: serialize"),
    (Outbox, "checkpoint", "checkpoint: queue"),
    (train._Tracker, "result", "result: serialize weights"),
    (ServiceClient, "upload_weights", "upload weights"),
    (ServiceClient, "complete", "complete"),
    (ServiceClient, "report", "report round trip"),
    (ServiceClient, "upload_checkpoint", "checkpoint upload"),
    (ServiceClient, "heartbeat", "heartbeat"),
]


# -------------------------------------------------------------------------------------------
# The sweep


def spec(args: argparse.Namespace, epochs: int) -> dict[str, Any]:
    return {
        "name": "utilization",
        "model": "mlp",
        "dataset": "digits",
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "search_space": {
            "lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
            "dropout": {"type": "float", "low": 0.0, "high": 0.2},
        },
        "fixed": {
            "epochs": epochs,
            "batch_size": args.batch_size,
            "checkpoint_every": args.checkpoint_every,
            "checkpoint_share": args.checkpoint_share,
        },
        "sampler": {"name": "tpe", "seed": 1},
        "pruner": {"name": "none"},
        "budget": {"n_trials": args.trials, "max_concurrent": 1},
    }


def solo_epoch(batch_size: int) -> float:
    """Seconds of one training pass of the sweep's model, trained alone (no sweep running)."""
    data = train.to_device(load_dataset("digits"), CPU)
    hparams = catalog.resolve_hyperparameters("mlp", {"batch_size": batch_size, "epochs": 20})
    config = train.TrialConfig("mlp", {}, hparams, "val_accuracy", "maximize", "best", 0)
    seconds: list[float] = []
    train.train_trial(config, data, CPU, lambda e, m: seconds.append(m["epoch_seconds"]))
    return statistics.median(seconds[2:])


@contextmanager
def in_process(tmp: Path) -> Iterator[tuple[httpx.Client, ServiceClient]]:
    from sweep.service.app import create_app

    settings = Settings(database_url=f"sqlite:///{tmp / 'sweep.db'}", data_dir=tmp)
    admin = create_in_database(role="admin", settings=settings)
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {admin}"
        yield client, ServiceClient("", http=client)


@contextmanager
def real_server(tmp: Path) -> Iterator[tuple[httpx.Client, ServiceClient]]:
    url = f"sqlite:///{tmp / 'sweep.db'}"
    settings = Settings(database_url=url)
    admin = create_in_database(role="admin", settings=settings)
    worker_token = create_in_database(role="worker", settings=settings)
    port = 18600 + os.getpid() % 1000
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "SWEEP_DATABASE_URL": url}
    command = [sys.executable, "-m", "sweep.cli", "server", "--port", str(port)]
    with (tmp / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [*command, "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        headers = {"Authorization": f"Bearer {admin}"}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            wait_healthy(client, server)
            yield client, ServiceClient(base, token=worker_token)
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_healthy(client: httpx.Client, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if client.get(f"{API}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("the server did not start")


def run_sweep(args: argparse.Namespace, epochs: int, profile: Profile) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        connect = real_server if args.server else in_process
        with connect(Path(tmp)) as (admin, service):
            body = spec(args, epochs)
            experiment = admin.post(f"{API}/experiments", json=body).raise_for_status().json()
            options = loop.WorkerOptions(
                name="bench", device=CPU, wait_seconds=1.0, max_trials=args.trials
            )
            for owner, attribute, name in WRAPPED:
                profile.wrap(owner, attribute, name)
            ran = loop.Worker(service, options).run()
            assert ran == args.trials, ran
            path = f"{API}/experiments/{experiment['id']}/trials"
            trials = admin.get(path, params={"limit": 1000}).raise_for_status().json()["items"]
            states = [t["state"] for t in trials]
            assert states == ["completed"] * args.trials, states
            epoch_seconds = 0.0
            for t in trials:
                detail = admin.get(f"{API}/trials/{t['id']}").raise_for_status().json()
                epoch_seconds += sum(m["values"]["epoch_seconds"] for m in detail["metrics"])
            return {"epoch_seconds": epoch_seconds}


# -------------------------------------------------------------------------------------------
# Printing


def breakdown(profile: Profile, trials: int, epochs: int, reported: float, solo: float) -> None:
    start = min(c.start for c in profile.main if c.name == "claim")
    end = max(c.end for c in profile.main + profile.background if c.name == "complete")
    wall = end - start
    calls = [c for c in profile.main if start <= c.start and c.end <= end]
    own: dict[str, float] = {}
    for c in calls:
        own[c.name] = own.get(c.name, 0.0) + c.own
    own["not in a wrapped function"] = wall - sum(own.values())
    training = own.get(TRAINING, 0.0)
    epochs_total = sum(own.get(name, 0.0) for name in EPOCH_PARTS)
    solo_share = solo * trials * epochs / wall
    print(
        f"{trials} trials x {epochs} epochs; worker wall time {wall:.2f} s, "
        f"{wall / trials * 1e3:.0f} ms per trial"
    )
    print(
        f"busy: epochs (training passes, validation, latency_ms) {epochs_total / wall:.3f} "
        f"(target >= 0.95); training passes {training / wall:.3f}; "
        f"epoch_seconds reported by the trials {reported / wall:.3f}"
    )
    print(
        f"training passes took {training / (trials * epochs) * 1e3:.2f} ms in the sweep, "
        f"{solo * 1e3:.2f} ms alone (median of before and after it), as the server and the "
        f"worker's threads share the machine; {wall / (trials * epochs) * 1e3:.2f} ms of wall "
        f"time per epoch, so passes at their solo speed would fill {solo_share:.3f} of it"
    )
    print(f"{'main thread':<30} {'seconds':>8} {'share':>7} {'ms/trial':>9} {'ms/epoch':>9}")
    for name, seconds in sorted(own.items(), key=lambda kv: -kv[1]):
        print(
            f"{name:<30} {seconds:>8.3f} {seconds / wall:>7.1%} "
            f"{seconds / trials * 1e3:>9.2f} {seconds / (trials * epochs) * 1e3:>9.3f}"
        )
    print(f"{'other threads (overlapping)':<30} {'calls':>8} {'p50 ms':>7} {'total s':>9}")
    names = sorted({c.name for c in profile.background})
    for name in names:
        seconds = [c.end - c.start for c in profile.background if c.name == name]
        print(
            f"{name:<30} {len(seconds):>8} {statistics.median(seconds) * 1e3:>7.2f} "
            f"{sum(seconds):>9.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--trial-seconds", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=0, help="fixed epochs (default: measured)")
    parser.add_argument("--checkpoint-every", type=int, default=1, help="1: the default")
    parser.add_argument("--checkpoint-share", type=float, default=0.05, help="0.05: the default")
    parser.add_argument("--server", action="store_true", help="a real `sweep server` process")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before = solo_epoch(args.batch_size)
    epochs = args.epochs or max(1, round(args.trial_seconds / before))
    where = "a real sweep server process" if args.server else "the app in process"
    print(
        f"digits MLP, batch size {args.batch_size}, checkpoint_every {args.checkpoint_every}, "
        f"checkpoint_share {args.checkpoint_share}, "
        f"{args.threads} thread(s), {where}"
    )
    profile = Profile()
    sweep = run_sweep(args, epochs, profile)
    solo = statistics.median([before, solo_epoch(args.batch_size)])
    breakdown(profile, args.trials, epochs, sweep["epoch_seconds"], solo)


if __name__ == "__main__":
    main()
