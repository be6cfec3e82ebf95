"""Trials per second with K trials at once per device (`sweep worker --trials-per-device K`).

    .venv/bin/python benchmarks/pool_throughput.py [--device cuda:0] [--ks 1 2 4 8]
        [--trials 32] [--epochs 5] [--dataset digits | synthetic]

For each K: a fresh `sweep server` on a SQLite file, one experiment of --trials trials (the
mlp model, random sampler, no pruning, fixed epochs), and one worker pool on --device with K
processes. Trials per second run from the pool's start until the experiment completes, so
process start-up and dataset loading are in the figure, as for a user. The ratio is against
K = 1 in the same run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.processes import ServerProcess


def spec(args: argparse.Namespace) -> dict[str, Any]:
    dataset: Any = "digits"
    if args.dataset == "synthetic":
        dataset = {"name": "synthetic", "options": {"n_samples": 100_000, "n_features": 40}}
    return {
        "name": f"pool-{args.dataset}",
        "model": "mlp",
        "dataset": dataset,
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "search_space": {
            "lr": {"type": "float", "low": 1e-3, "high": 0.05, "log": True},
            "hidden_units": {"type": "int", "low": 32, "high": 256, "log": True},
        },
        "fixed": {"epochs": args.epochs, "batch_size": 128, "checkpoint_every": 0},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "budget": {"n_trials": args.trials, "max_concurrent": 64},
    }


def run_pool(args: argparse.Namespace, k: int, tmp: Path) -> float:
    """Trials per second of one pool of k processes over a fresh experiment."""
    server = ServerProcess(f"sqlite:///{tmp / f'pool-{k}.db'}", tmp / f"logs-{k}")
    server.start()
    try:
        headers = {"Authorization": f"Bearer {server.admin_token}"}
        with httpx.Client(base_url=f"{server.url}/api/v1", headers=headers, timeout=30) as http:
            experiment_id = http.post("/experiments", json=spec(args)).json()["id"]
            started = time.perf_counter()
            pool = subprocess.Popen(
                [
                    sys.executable,
                    *("-m", "sweep.cli", "worker", "--server", server.url),
                    *("--devices", args.device, "--trials-per-device", str(k)),
                    *("--exit-when-idle", "2"),
                ],
                env={**os.environ, "SWEEP_TOKEN": server.worker_token},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            # Each read is answered the moment the experiment ends, or after a second.
            path, wait = f"/experiments/{experiment_id}", {"wait": 1}
            while http.get(path, params=wait).json()["state"] != "completed":
                if pool.poll() is not None:
                    raise RuntimeError(f"the pool exited early ({pool.returncode})")
            elapsed = time.perf_counter() - started
            pool.wait(timeout=120)
        return args.trials / elapsed
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--dataset", choices=["digits", "synthetic"], default="digits")
    args = parser.parse_args()
    print(f"{args.dataset} mlp, {args.trials} trials x {args.epochs} epochs on {args.device}")
    print(f"{'K':>3} {'trials/s':>9} {'vs K=1':>7}", flush=True)
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.ks:
            rate = run_pool(args, k, Path(tmp))
            base = base or rate
            print(f"{k:>3} {rate:>9.2f} {rate / base:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
