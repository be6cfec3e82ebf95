"""What pruning saves and what it costs, and what TPE buys over random search, on real sweeps.

    .venv/bin/python benchmarks/pruning.py [--model mlp|cnn] [--pruner NAME --pruner-options JSON]
        [--seeds 0 1 2] [--trials 40] [--epochs 20] [--skip-samplers | --only-samplers]

Every sweep trains the `mlp` model (the demo's search space) or the `cnn` model (the same
optimizer, lr, batch size, activation and dropout, with its channels and fc_units) on the
bundled digits (`digits`, or `digits_image` for the CNN) through the real app in process (a
fresh SQLite file each) with one in-process worker on one CPU thread, so sweeps differ only
in what the sampler and pruner decide. --also adds more pruners to (1), sharing its sweeps
without a pruner. We count epochs, not seconds: the machine
may be shared, and an epoch costs the same whichever trial runs it.

1. Pruning: the same trial budget with TPE (sampler seed = each of --seeds), without a pruner
   and with --pruner. Per seed: epochs trained (sum of every trial's last epoch), the ratio
   pruned/unpruned, best val_accuracy of each, and the difference in percentage points.
2. Samplers: TPE against random search, best val_accuracy after the same budget for each of
   --sampler-seeds, both with --sampler-pruner (the chosen pruner unless told "none").
   Sweeps already run for (1) are reused, not run again. TPE's first 10 trials come from a
   random sampler seeded like it, so with the same seed both samplers start from the same 10
   trials and differ only in what TPE does with them.

Validation accuracy is on 360 images, so one image is 0.28 point and best values move in
steps of it. To try another pruner: --pruner hyperband --pruner-options '{"min_resource": 1}'.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from sweep.service import auth, search
from sweep.service.app import create_app
from sweep.service.config import Settings
from sweep.service.schemas import TokenCreate
from sweep.worker.client import ServiceClient
from sweep.worker.loop import Worker, WorkerOptions

API = "/api/v1"
# The demo's search space (examples/digits-mlp.yaml), and the CNN's beside it.
SPACE: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parent.parent / "examples" / "digits-mlp.yaml").read_text()
)["search_space"]
SPACES: dict[str, dict[str, Any]] = {
    "mlp": SPACE,
    "cnn": {
        **{name: value for name, value in SPACE.items() if name != "hidden_units"},
        "channels": {"type": "int", "low": 4, "high": 32, "log": True},
        "fc_units": {"type": "int", "low": 16, "high": 128, "log": True},
    },
}
# The service's default pruner; service/search/pruners.py says why it is the default.
DEFAULT_PRUNER: str = search.DEFAULT_PRUNER["name"]
DEFAULT_PRUNER_OPTIONS: dict[str, Any] = search.DEFAULT_PRUNER["options"]


@dataclass(frozen=True)
class Sweep:
    """What one finished sweep cost and found."""

    epochs: int  # epochs trained, summed over trials
    best: float  # the experiment's best val_accuracy
    pruned: int  # trials the pruner stopped
    seconds: float


def spec(
    args: argparse.Namespace, sampler: str, seed: int, pruner: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": f"{sampler}-{seed}-{pruner['name']}",
        "model": args.model,
        "dataset": "digits_image" if args.model == "cnn" else "digits",
        "objective": {"metric": "val_accuracy", "direction": "maximize"},
        "search_space": SPACES[args.model],
        # No checkpoints: nothing is interrupted here, and they would only add I/O.
        "fixed": {"epochs": args.epochs, "checkpoint_every": 0},
        "sampler": {"name": sampler, "seed": seed},
        "pruner": pruner,
        "budget": {"n_trials": args.trials, "max_concurrent": 1},
    }


@contextmanager
def service(tmp: Path) -> Iterator[TestClient]:
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'sweep.db'}", data_dir=tmp, claim_poll_seconds=0.05
    )
    with TestClient(create_app(settings)) as client:
        with client.app.state.db.transaction() as session:  # type: ignore[attr-defined]
            secret, _ = auth.create(session, body=TokenCreate(role="admin"))
        client.headers["Authorization"] = f"Bearer {secret}"
        yield client


def run_sweep(body: dict[str, Any]) -> Sweep:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, service(Path(tmp)) as client:
        response = client.post(f"{API}/experiments", json=body)
        experiment_id = response.raise_for_status().json()["id"]
        options = WorkerOptions(
            name="bench", device=torch.device("cpu"), wait_seconds=0.1, exit_when_idle=0.3
        )
        Worker(ServiceClient("", http=client), options).run()
        experiment = client.get(f"{API}/experiments/{experiment_id}").json()
        trials = all_trials(client, experiment_id)
    if experiment["state"] != "completed" or len(trials) != body["budget"]["n_trials"]:
        raise RuntimeError(f"sweep {body['name']} ended {experiment['state']}: {experiment}")
    return Sweep(
        epochs=sum(t["last_epoch"] for t in trials),
        best=float(experiment["best_value"]),
        pruned=sum(t["state"] == "pruned" for t in trials),
        seconds=time.perf_counter() - started,
    )


def all_trials(client: TestClient, experiment_id: int) -> list[dict[str, Any]]:
    trials: list[dict[str, Any]] = []
    while True:
        page = client.get(
            f"{API}/experiments/{experiment_id}/trials",
            params={"limit": 1000, "offset": len(trials)},
        ).json()
        trials += page["items"]
        if len(trials) >= page["total"] or not page["items"]:
            return trials


class Sweeps:
    """Runs each (sampler, seed, pruner) sweep once, however often it is asked for."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._done: dict[str, Sweep] = {}

    def get(self, sampler: str, seed: int, pruner: dict[str, Any]) -> Sweep:
        body = spec(self.args, sampler, seed, pruner)
        key = json.dumps(body, sort_keys=True)
        if key not in self._done:
            self._done[key] = run_sweep(body)
            done = self._done[key]
            print(
                f"    ran {sampler} seed {seed} pruner {describe(pruner)}: "
                f"{done.epochs} epochs, best {done.best:.4f}, {done.pruned} pruned, "
                f"{done.seconds:.0f} s",
                flush=True,
            )
        return self._done[key]


def describe(pruner: dict[str, Any]) -> str:
    options = pruner.get("options") or {}
    return pruner["name"] + (json.dumps(options, separators=(",", ":")) if options else "")


def compare_pruning(sweeps: Sweeps, pruner: dict[str, Any], seeds: list[int]) -> None:
    print(f"\n1. Pruning: TPE, no pruner vs {describe(pruner)}", flush=True)
    rows = []
    for seed in seeds:
        plain, pruned = sweeps.get("tpe", seed, {"name": "none"}), sweeps.get("tpe", seed, pruner)
        rows.append((seed, plain, pruned))
    print(
        f"{'seed':>5} {'epochs none':>12} {'pruned':>8} {'ratio':>7} {'trials pruned':>14} "
        f"{'best none':>10} {'pruned':>8} {'diff (pt)':>10}"
    )
    for seed, plain, pruned in rows:
        print(
            pruning_row(
                str(seed), plain.epochs, pruned.epochs, pruned.pruned, plain.best, pruned.best
            )
        )
    print(
        pruning_row(
            "mean",
            statistics.mean(p.epochs for _, p, _ in rows),
            statistics.mean(q.epochs for _, _, q in rows),
            statistics.mean(q.pruned for _, _, q in rows),
            statistics.mean(p.best for _, p, _ in rows),
            statistics.mean(q.best for _, _, q in rows),
        )
    )


def pruning_row(
    label: str, plain_epochs: float, epochs: float, n_pruned: float, plain: float, best: float
) -> str:
    return (
        f"{label:>5} {plain_epochs:>12.0f} {epochs:>8.0f} {epochs / plain_epochs:>7.2f} "
        f"{n_pruned:>14.1f} {plain:>10.4f} {best:>8.4f} {(best - plain) * 100:>+10.2f}"
    )


def compare_samplers(sweeps: Sweeps, pruner: dict[str, Any], seeds: list[int]) -> None:
    print(f"\n2. Samplers: TPE vs random, pruner {describe(pruner)}", flush=True)
    rows = [
        (seed, sweeps.get("tpe", seed, pruner), sweeps.get("random", seed, pruner))
        for seed in seeds
    ]
    print(
        f"{'seed':>5} {'best tpe':>9} {'random':>8} {'diff (pt)':>10} "
        f"{'epochs tpe':>11} {'random':>8}"
    )
    for seed, tpe, rnd in rows:
        print(sampler_row(str(seed), tpe.best, rnd.best, tpe.epochs, rnd.epochs))
    print(
        sampler_row(
            "mean",
            statistics.mean(t.best for _, t, _ in rows),
            statistics.mean(r.best for _, _, r in rows),
            statistics.mean(t.epochs for _, t, _ in rows),
            statistics.mean(r.epochs for _, _, r in rows),
        )
    )


def sampler_row(label: str, tpe: float, rnd: float, tpe_epochs: float, rnd_epochs: float) -> str:
    return (
        f"{label:>5} {tpe:>9.4f} {rnd:>8.4f} {(tpe - rnd) * 100:>+10.2f} "
        f"{tpe_epochs:>11.0f} {rnd_epochs:>8.0f}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(SPACES), default="mlp")
    parser.add_argument("--pruner", default=DEFAULT_PRUNER, help="a name in PRUNER_OPTIONS")
    parser.add_argument(
        "--pruner-options",
        type=json.loads,
        default=None,
        help=f"JSON object (default for {DEFAULT_PRUNER}: {json.dumps(DEFAULT_PRUNER_OPTIONS)})",
    )
    parser.add_argument(
        "--wrapped", type=json.loads, default=None, help="for --pruner patient: a pruner spec"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="for (1)")
    parser.add_argument(
        "--sampler-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="for (2)"
    )
    parser.add_argument(
        "--sampler-pruner",
        choices=["chosen", "none"],
        default="chosen",
        help="the pruner both samplers run with in (2)",
    )
    parser.add_argument("--trials", type=int, default=40, help="trials per sweep")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per trial")
    parser.add_argument(
        "--also",
        type=json.loads,
        default=[],
        help='more pruners for (1), a JSON list: [{"name": "median", "options": {...}}, ...]',
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--skip-samplers", action="store_true", help="run (1) only")
    only.add_argument("--only-samplers", action="store_true", help="run (2) only")
    return parser.parse_args()


def chosen_pruner(args: argparse.Namespace) -> dict[str, Any]:
    options = args.pruner_options
    if options is None:
        options = DEFAULT_PRUNER_OPTIONS if args.pruner == DEFAULT_PRUNER else {}
    pruner: dict[str, Any] = {"name": args.pruner, "options": options}
    if args.wrapped is not None:
        pruner["wrapped"] = args.wrapped
    return pruner


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("sweep").setLevel(logging.ERROR)
    pruner, sweeps = chosen_pruner(args), Sweeps(args)
    print(
        f"{args.model} on digits, {args.trials} trials x {args.epochs} epochs, one worker, "
        "one thread"
    )
    started = time.perf_counter()
    if not args.only_samplers:
        for candidate in [pruner, *args.also]:
            compare_pruning(sweeps, candidate, args.seeds)
    if not args.skip_samplers:
        sampler_pruner = pruner if args.sampler_pruner == "chosen" else {"name": "none"}
        compare_samplers(sweeps, sampler_pruner, args.sampler_seeds)
    print(f"\nwall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
