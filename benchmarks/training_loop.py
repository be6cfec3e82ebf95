"""The worker's epoch against a minimal hand-written loop and the classic DataLoader loop.

    .venv/bin/python benchmarks/training_loop.py [--threads 1] [--batch-sizes 32 256]
        [--cases mlp/digits cnn/digits_image mlp/synthetic] [--repeats 3] [--run-seconds 1.5]
        [--synthetic-samples 100000]

Three ways to train the same model (sweep.models.registry.build_model, default hyperparameters,
Adam at lr 1e-3, the same seed) on the same tensors, preloaded once:

- worker: `sweep.worker.train.train_trial`, the code a worker runs, for a whole trial of N epochs,
  with a `check` like the worker's (two attributes read before every batch). Its training
  pass (`_train_one_epoch`: shuffle, batches, forward, backward, step, the loss read back
  once) is timed from outside, and so is its whole epoch, report to report: the training
  pass, `evaluate`, `measure_latency` (the latency_ms metric) and the rest (scheduler,
  best-epoch bookkeeping).
- hand: shuffled indices from torch.randperm, sliced into batches of the preloaded tensors,
  forward, loss, zero_grad, backward, step; nothing else.
- DataLoader: `DataLoader(TensorDataset(X, y), batch_size, shuffle=True)`, the same steps.

The three are interleaved epoch by epoch: the worker's report callback runs one hand-written
and one DataLoader epoch (in alternating order) and is left out of the worker's timings. A
trial lasts about --run-seconds (at least 3 epochs); --repeats trials per row. Figures are
medians over the timed epochs of every repeat (the first epoch of each trial, which builds
and warms up, is not counted); ratios are medians of the per-epoch ratios of epochs run side
by side, which a shared, noisy machine disturbs least. Targets: the worker's training pass
<= 1.05x the hand-written loop's; the DataLoader loop >= 1.25x the worker's. One torch thread
by default: on a shared 2-core machine these small models train several times slower on two
(`--threads 1 2` adds those rows).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sweep.worker.train as train
from sweep.models import catalog
from sweep.models.datasets import load_dataset
from sweep.models.registry import build_model
from sweep.worker.train import DeviceData, TrialConfig, to_device

CPU = torch.device("cpu")
DEVICE = CPU  # --device; the DataLoader loop moves each batch there, as such loops do
SEED = 0


@dataclass
class Case:
    model: str
    dataset: str
    options: dict[str, int]
    data: DeviceData

    @property
    def label(self) -> str:
        rows = len(self.data.X_train) + len(self.data.X_val)
        return f"{self.model}/{self.dataset} ({rows} rows)"


@dataclass
class Timings:
    """Per-epoch seconds of each kind, over the timed epochs of every repeat."""

    epochs: dict[str, list[float]] = field(default_factory=dict)

    def add(self, kind: str, seconds: list[float]) -> None:
        self.epochs.setdefault(kind, []).extend(seconds)

    def median(self, kind: str) -> float:
        return statistics.median(self.epochs[kind])


# -------------------------------------------------------------------------------------------
# The hand-written and DataLoader loops: one epoch each


@dataclass
class Loop:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module = field(default_factory=nn.CrossEntropyLoss)

    @classmethod
    def fresh(cls, case: Case) -> Loop:
        torch.manual_seed(SEED)
        hparams = catalog.resolve_hyperparameters(case.model, {})
        model = build_model(case.model, case.data.input_shape, case.data.n_outputs, hparams)
        model.to(DEVICE)
        return cls(model, torch.optim.Adam(model.parameters(), lr=1e-3))

    def step(self, X: torch.Tensor, y: torch.Tensor) -> None:
        loss = self.loss_fn(self.model(X), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def hand_epoch(loop: Loop, X: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
    loop.model.train()
    order = torch.randperm(len(X), device=X.device)
    for start in range(0, len(X), batch_size):
        idx = order[start : start + batch_size]
        loop.step(X[idx], y[idx])


def dataloader_epoch(loop: Loop, loader: DataLoader[Any]) -> None:
    loop.model.train()
    for xb, yb in loader:
        loop.step(xb.to(DEVICE, non_blocking=True), yb.to(DEVICE, non_blocking=True))


def timed(function: Callable[[], Any]) -> float:
    started = time.perf_counter()
    function()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    return time.perf_counter() - started


# -------------------------------------------------------------------------------------------
# The worker's loop, timed from outside, with the other two interleaved epoch by epoch


class Clock:
    """Wraps sweep.worker.train's per-epoch functions to time each call (in this process only:
    `_run_epoch` looks them up in the module when it calls them)."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = {}
        for name in ("_train_one_epoch", "evaluate", "measure_latency"):
            setattr(train, name, self._timed(name, getattr(train, name)))

    def _timed(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.calls.setdefault(name, []).append(time.perf_counter() - started)

        return wrapper


class NoAnswer:
    verdict: tuple[str, str] | None = None  # the outbox's
    stop_reason: str | None = None  # the heartbeat's


def worker_check() -> None:
    """What the worker's check does before each batch while nothing ended the trial."""
    if NoAnswer.verdict is not None:
        raise train.Pruned(NoAnswer.verdict[1])
    if NoAnswer.stop_reason:
        raise train.Stopped(NoAnswer.stop_reason)


def run_trial(clock: Clock, case: Case, batch_size: int, epochs: int, t: Timings) -> None:
    """One worker trial of `epochs`; after each of its epochs (inside the report callback, so
    outside the worker's own timings) one hand-written and one DataLoader epoch run, in
    alternating order."""
    values = {"batch_size": batch_size, "epochs": epochs, "seed": SEED}
    hparams = catalog.resolve_hyperparameters(case.model, values)
    spec = {"name": case.dataset, "options": case.options, "val_fraction": 0.2, "split_seed": 0}
    config = TrialConfig(case.model, spec, hparams, "val_accuracy", "maximize", "best", 0)
    X, y = case.data.X_train, case.data.y_train
    hand, other = Loop.fresh(case), Loop.fresh(case)
    host = TensorDataset(X.cpu(), y.cpu())
    loader = DataLoader(host, batch_size=batch_size, shuffle=True, pin_memory=DEVICE.type == "cuda")
    epoch_seconds: dict[str, list[float]] = {"worker": [], "hand": [], "dataloader": []}
    left_callback = [0.0]

    def report(epoch: int, metrics: dict[str, float]) -> None:
        epoch_seconds["worker"].append(time.perf_counter() - left_callback[0])
        runs = {
            "hand": lambda: hand_epoch(hand, X, y, batch_size),
            "dataloader": lambda: dataloader_epoch(other, loader),
        }
        for name in sorted(runs, reverse=epoch % 2 == 0):
            epoch_seconds[name].append(timed(runs[name]))
        left_callback[0] = time.perf_counter()

    clock.calls = {}
    left_callback[0] = time.perf_counter()
    train.train_trial(config, case.data, DEVICE, report, check=worker_check)
    # The first epoch of each builds, allocates and warms up: not counted.
    for name, seconds in epoch_seconds.items():
        t.add(name, seconds[1:])
    t.add("worker_train", clock.calls["_train_one_epoch"][1:])
    t.add("worker_eval", clock.calls["evaluate"][1:])
    t.add("worker_latency", clock.calls["measure_latency"][1:])
    pairs = zip(clock.calls["_train_one_epoch"][1:], epoch_seconds["hand"][1:], strict=True)
    t.add("worker/hand", [w / h for w, h in pairs])
    pairs = zip(epoch_seconds["dataloader"][1:], clock.calls["_train_one_epoch"][1:], strict=True)
    t.add("dataloader/worker", [d / w for d, w in pairs])


# -------------------------------------------------------------------------------------------
# Running and printing


def epochs_for(case: Case, batch_size: int, run_seconds: float) -> int:
    """Epochs whose three loops together last about run_seconds (at least 3, at most 200)."""
    loop = Loop.fresh(case)
    X, y = case.data.X_train, case.data.y_train
    seconds = [timed(lambda: hand_epoch(loop, X, y, batch_size)) for _ in range(3)]
    return max(3, min(200, round(run_seconds / (4 * statistics.median(seconds)))))


def measure(clock: Clock, case: Case, batch_size: int, repeats: int, run_seconds: float) -> Timings:
    epochs = epochs_for(case, batch_size, run_seconds)
    timings = Timings()
    for _ in range(repeats):
        run_trial(clock, case, batch_size, epochs, timings)
    return timings


HEADER = (
    f"{'thr':>3} {'case':<30} {'bs':>4} {'n':>4} {'hand':>8} {'DataLoader':>10} "
    f"{'worker':>8} {'w/hand':>7} {'DL/w':>6} {'epoch':>8} {'eval':>6} {'latency':>7} "
    f"{'rest':>6}"
)


def row(threads: int, case: Case, batch_size: int, t: Timings) -> str:
    hand, loader, work = t.median("hand"), t.median("dataloader"), t.median("worker_train")
    epoch = t.median("worker")
    evaluate, latency = t.median("worker_eval") / epoch, t.median("worker_latency") / epoch
    rest = 1 - work / epoch - evaluate - latency
    return (
        f"{threads:>3} {case.label:<30} {batch_size:>4} {len(t.epochs['hand']):>4} "
        f"{hand * 1e3:>8.2f} {loader * 1e3:>10.2f} {work * 1e3:>8.2f} "
        f"{t.median('worker/hand'):>7.3f} {t.median('dataloader/worker'):>6.2f} "
        f"{epoch * 1e3:>8.2f} {evaluate:>6.1%} {latency:>7.1%} {rest:>6.1%}"
    )


def load_case(name: str, synthetic_samples: int) -> Case:
    model, dataset = name.split("/")
    options = {"n_samples": synthetic_samples} if dataset == "synthetic" else {}
    data = to_device(load_dataset(dataset, options), DEVICE)
    return Case(model, dataset, options, data)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument(
        "--cases", nargs="+", default=["mlp/digits", "cnn/digits_image", "mlp/synthetic"]
    )
    parser.add_argument("--repeats", type=int, default=3, help="worker trials per row")
    parser.add_argument(
        "--run-seconds", type=float, default=1.5, help="about how long one trial of a row runs"
    )
    parser.add_argument("--synthetic-samples", type=int, default=100_000)
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    clock = Clock()
    cases = [load_case(name, args.synthetic_samples) for name in args.cases]
    print(
        "Milliseconds per epoch, medians over the timed epochs of every repeat. worker: its\n"
        "training pass; w/hand and DL/w: medians of the ratios of epochs run side by side;\n"
        "epoch: the worker's whole epoch (report to report), with the shares of evaluate,\n"
        "measure_latency (latency_ms) and the rest (scheduler, best-epoch bookkeeping) in it."
    )
    print(HEADER)
    ratios: list[tuple[float, float]] = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for case in cases:
            for batch_size in args.batch_sizes:
                t = measure(clock, case, batch_size, args.repeats, args.run_seconds)
                print(row(threads, case, batch_size, t), flush=True)
                ratios.append((t.median("worker/hand"), t.median("dataloader/worker")))
    to_hand, to_loader = [r[0] for r in ratios], [r[1] for r in ratios]
    print(
        f"worker/hand: worst {max(to_hand):.3f}, median {statistics.median(to_hand):.3f} "
        f"(target <= 1.05). DataLoader/worker: worst {min(to_loader):.2f}, median "
        f"{statistics.median(to_loader):.2f} (target >= 1.25)."
    )


if __name__ == "__main__":
    main()
