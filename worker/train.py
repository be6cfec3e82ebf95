"""Train one trial: seed -> data -> model -> optimizer -> epochs (train, evaluate, report).

The worker loop loads a dataset once (`to_device`) and calls `train_trial` for each trial it
claims. After every epoch `train_trial` hands the metrics to `report`, which talks to the
service and raises `Pruned` or `Stopped` when the trial should end early, the way an Optuna
objective raises `optuna.TrialPruned()`. The service's answer to a report may come while the
next epoch trains; `check`, called before every batch, raises as soon as it does.
"""

from __future__ import annotations

import functools
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from sweep.models import bundle, catalog
from sweep.models.datasets import Dataset, Preprocessing
from sweep.models.registry import build_model


class Pruned(Exception):
    """Raised by the report callback: the service decided to prune this trial."""


class Stopped(Exception):
    """Raised by the report callback: the experiment was cancelled or the trial is not running."""


class Diverged(Exception):
    """Raised by train_trial when a training or validation loss is not finite."""


@dataclass(frozen=True)
class TrialConfig:
    model: str  # a name in catalog.models()
    dataset: dict[str, Any]  # {"name", "options", "val_fraction", "split_seed"}
    hparams: dict[str, Any]  # resolved by catalog.resolve_hyperparameters
    objective_metric: str  # e.g. "val_accuracy", "val_loss", "val_r2"
    direction: str  # "maximize" | "minimize"
    reduce: str  # "best": keep the best epoch's weights and value; "last": the last epoch's
    number: int  # the trial's number; it trains with seed hparams["seed"] + number


@dataclass(frozen=True)
class DeviceData:
    """A Dataset's splits as tensors on the training device, loaded once per worker."""

    X_train: torch.Tensor  # float32, (n, *input_shape)
    y_train: torch.Tensor  # int64 (n,) for classification; float32 (n, 1) otherwise, like logits
    X_val: torch.Tensor
    y_val: torch.Tensor
    task: str
    input_shape: tuple[int, ...]
    n_outputs: int
    # Regression targets were divided by its y_std (val_mae is reported in original units);
    # a trained model is bundled with it.
    preprocessing: Preprocessing


def to_device(data: Dataset, device: torch.device) -> DeviceData:
    def targets(y: Any) -> torch.Tensor:
        t = torch.from_numpy(y).to(device)
        return t if data.task == "classification" else t.view(-1, 1)

    return DeviceData(
        X_train=torch.from_numpy(data.X_train).to(device),
        y_train=targets(data.y_train),
        X_val=torch.from_numpy(data.X_val).to(device),
        y_val=targets(data.y_val),
        task=data.task,
        input_shape=data.input_shape,
        n_outputs=data.n_outputs,
        preprocessing=data.preprocessing(),
    )


@dataclass(frozen=True)
class TrialResult:
    value: float  # the objective at the kept epoch
    epoch: int  # 1-based epoch whose weights are kept
    epochs_run: int
    metrics: dict[str, float]  # the kept epoch's metrics
    pack: Callable[[], bytes] = field(repr=False, compare=False)  # makes `model`

    @functools.cached_property
    def model(self) -> bytes:
        """The kept weights as a model bundle (sweep.models.bundle), packed when first read:
        a model the service would not keep is never serialized."""
        return self.pack()


# (epoch from 1, metrics) -> None; may raise Pruned or Stopped
Report = Callable[[int, dict[str, float]], None]
# () -> None, before every batch; may raise Pruned or Stopped
Check = Callable[[], None]


def _go_on() -> None:
    """The Check of a trial that only its reports can end."""


class Checkpoints(Protocol):
    """Where train_trial leaves checkpoints to resume from."""

    def due(self, epoch: int) -> bool:
        """Whether to checkpoint after this (reported) epoch."""

    def save(self, epoch: int, snapshot: Snapshot) -> None:
        """Keep the checkpoint; may raise to end the trial once it is kept."""


# -------------------------------------------------------------------------------------------
# Optimizers, schedules and losses by name (the names in sweep.models.catalog)

_OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {
    "sgd": lambda params, lr, wd, m: torch.optim.SGD(params, lr=lr, weight_decay=wd),
    "momentum": lambda params, lr, wd, m: torch.optim.SGD(
        params, lr=lr, momentum=m, weight_decay=wd
    ),
    "adam": lambda params, lr, wd, m: torch.optim.Adam(params, lr=lr, weight_decay=wd),
    "adamw": lambda params, lr, wd, m: torch.optim.AdamW(params, lr=lr, weight_decay=wd),
    "rmsprop": lambda params, lr, wd, m: torch.optim.RMSprop(
        params, lr=lr, momentum=m, weight_decay=wd
    ),
}

_SCHEDULES: dict[str, Callable[[Optimizer, dict[str, Any]], LRScheduler | None]] = {
    "none": lambda opt, hp: None,
    "step": lambda opt, hp: torch.optim.lr_scheduler.StepLR(
        opt, step_size=int(hp["lr_step_size"]), gamma=float(hp["lr_gamma"])
    ),
    "cosine": lambda opt, hp: torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=int(hp["epochs"])
    ),
    "exponential": lambda opt, hp: torch.optim.lr_scheduler.ExponentialLR(
        opt, gamma=float(hp["lr_gamma"])
    ),
}

_LOSSES: dict[str, Callable[[], nn.Module]] = {
    "classification": nn.CrossEntropyLoss,
    "binary": nn.BCEWithLogitsLoss,  # targets are shaped like the (n, 1) logits
    "regression": nn.MSELoss,
}


def make_optimizer(model: nn.Module, hp: dict[str, Any]) -> Optimizer:
    make = _OPTIMIZERS[str(hp["optimizer"])]
    return make(
        model.parameters(), float(hp["lr"]), float(hp["weight_decay"]), float(hp["momentum"])
    )


def make_scheduler(optimizer: Optimizer, hp: dict[str, Any]) -> LRScheduler | None:
    return _SCHEDULES[str(hp["lr_schedule"])](optimizer, hp)


def warm_up() -> None:
    """Build an optimizer and drop it. The first one a process builds imports torch's compiler
    stack (torch._dynamo): over a second of CPU, which the first trial would otherwise wait
    for. A worker does it while it registers and waits for work."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


# -------------------------------------------------------------------------------------------
# Training


def train_trial(
    config: TrialConfig,
    data: DeviceData,
    device: torch.device,
    report: Report,
    *,
    checkpoints: Checkpoints | None = None,
    resume: bytes | None = None,
    check: Check = _go_on,
) -> TrialResult:
    """Train one trial, reporting each epoch, and return the kept epoch's result.

    With `resume` (a checkpoint this function saved) training goes on after the checkpoint's
    epoch exactly as it would have without the interruption: weights, optimizer, schedule,
    random states, the best epoch so far and the training time so far all come back.

    Raises:
        Diverged: a training or validation loss was not finite.
        Pruned, Stopped: raised by `report` or `check`; they propagate unchanged.
        ValueError: the objective metric is not one the dataset's task reports.
    """
    hp = config.hparams
    _check_objective(config, data.task)
    seed = int(hp["seed"]) + config.number
    torch.manual_seed(seed)  # initial weights and dropout
    generator = torch.Generator(device=device).manual_seed(seed)  # batch order
    model = build_model(config.model, data.input_shape, data.n_outputs, hp).to(device)
    n_params = float(count_parameters(model))
    optimizer = make_optimizer(model, hp)
    scheduler = make_scheduler(optimizer, hp)
    loss_fn = _LOSSES[data.task]()
    tracker = _Tracker(config)
    state = _TrainingState(model, optimizer, scheduler, generator, tracker)
    done, train_seconds = state.restore(resume, device) if resume is not None else (0, 0.0)
    epochs = int(hp["epochs"])
    for epoch in range(done + 1, epochs + 1):
        metrics = _run_epoch(model, data, optimizer, loss_fn, hp, generator, epoch, check)
        if scheduler is not None:
            scheduler.step()
        train_seconds += metrics["epoch_seconds"]
        metrics |= {"n_params": n_params, "train_seconds": train_seconds}
        report(epoch, metrics)
        tracker.update(epoch, metrics, model)
        if tracker.patience_ran_out(int(hp["patience"])):
            break
        if checkpoints is not None and epoch < epochs and checkpoints.due(epoch):
            checkpoints.save(epoch, state.snapshot(epoch, train_seconds))
    return tracker.result(model, data.preprocessing)


def _check_objective(config: TrialConfig, task: str) -> None:
    if config.objective_metric not in catalog.objective_metrics(task):
        raise ValueError(f"{task} trials do not report {config.objective_metric!r}")


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters: what the n_params metric reports."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _run_epoch(
    model: nn.Module,
    data: DeviceData,
    optimizer: Optimizer,
    loss_fn: nn.Module,
    hp: dict[str, Any],
    generator: torch.Generator,
    epoch: int,
    check: Check,
) -> dict[str, float]:
    """One pass over the training split, then evaluation: the epoch's own metrics (the
    caller adds those that span epochs). epoch_seconds times the training pass alone."""
    lr = float(optimizer.param_groups[0]["lr"])
    started = time.perf_counter()
    train_loss = _train_one_epoch(model, data, optimizer, loss_fn, hp, generator, check)
    if not math.isfinite(train_loss):
        raise Diverged(f"non-finite loss at epoch {epoch}")
    seconds = time.perf_counter() - started  # train_loss was read back, so the device is done
    metrics = {"train_loss": train_loss, **evaluate(model, data, data.task)}
    if not math.isfinite(metrics["val_loss"]):
        raise Diverged(f"non-finite validation loss at epoch {epoch}")
    # After evaluate, which ran the same eval-mode forward passes: warm, as inference would be.
    latency_ms = measure_latency(model, data.X_val)
    return {**metrics, "epoch_seconds": seconds, "lr": lr, "latency_ms": latency_ms}


def _train_one_epoch(
    model: nn.Module,
    data: DeviceData,
    optimizer: Optimizer,
    loss_fn: nn.Module,
    hp: dict[str, Any],
    generator: torch.Generator,
    check: Check,
) -> float:
    """Mean training loss over the epoch's batches (non-finite if any batch's loss was)."""
    model.train()
    n = len(data.X_train)
    order = torch.randperm(n, generator=generator, device=data.X_train.device)
    l1, clip = float(hp["l1"]), float(hp["clip_grad_norm"])
    weights = [p for p in model.parameters() if p.dim() > 1]  # not biases or norm scales
    total = torch.zeros((), device=data.X_train.device)
    bounds = _batch_bounds(n, int(hp["batch_size"]))
    for start, end in bounds:
        check()  # the service may have ended the trial since the last report was sent
        idx = order[start:end]
        loss = loss_fn(model(data.X_train[idx]), data.y_train[idx])
        # Summed on the device: no sync per batch. A non-finite batch loss makes the sum
        # non-finite, and _run_epoch raises Diverged once the epoch's sum is read back.
        total += loss.detach()
        if l1 > 0:
            loss = loss + l1 * sum(w.abs().sum() for w in weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    return total.item() / len(bounds)


def _batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, end) of each batch; a one-sample remainder joins the batch before it, since
    batch norm cannot train on a single sample."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [(s, e) for s, e in zip(starts, [*starts[1:], n], strict=True)]


# -------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module, data: DeviceData, task: str, batch_size: int = 4096
) -> dict[str, float]:
    """Validation metrics: val_loss and val_accuracy, or val_loss, val_mae and val_r2."""
    model.eval()
    out = torch.cat(
        [model(data.X_val[i : i + batch_size]) for i in range(0, len(data.X_val), batch_size)]
    )
    metrics = _VAL_METRICS[task](out, data.y_val, data.preprocessing.y_std)
    values = torch.stack(list(metrics.values())).tolist()  # one device sync for all of them
    return dict(zip(metrics, values, strict=True))


def _classification(out: torch.Tensor, y: torch.Tensor, y_std: float) -> dict[str, torch.Tensor]:
    accuracy = (out.argmax(dim=1) == y).float().mean()
    return {"val_loss": F.cross_entropy(out, y), "val_accuracy": accuracy}


def _binary(out: torch.Tensor, y: torch.Tensor, y_std: float) -> dict[str, torch.Tensor]:
    accuracy = ((out > 0) == (y > 0.5)).float().mean()
    return {"val_loss": F.binary_cross_entropy_with_logits(out, y), "val_accuracy": accuracy}


def _regression(out: torch.Tensor, y: torch.Tensor, y_std: float) -> dict[str, torch.Tensor]:
    """MSE on the standardized targets (like train_loss), MAE in original units, and R^2."""
    sse = (out - y).pow(2).sum()
    sst = (y - y.mean()).pow(2).sum().clamp_min(1e-12)
    mae = (out - y).abs().mean() * y_std
    return {"val_loss": sse / len(y), "val_mae": mae, "val_r2": 1 - sse / sst}


_VAL_METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor, float], dict[str, torch.Tensor]]] = {
    "classification": _classification,
    "binary": _binary,
    "regression": _regression,
}

LATENCY_SAMPLES = 1024  # enough batches to average over, few enough to time every epoch
# Fixed rather than the trial's batch_size, so that trials are timed alike and a sweep cannot
# buy latency with a training batch size.
LATENCY_BATCH_SIZE = 256


@torch.no_grad()
def measure_latency(
    model: nn.Module,
    X: torch.Tensor,
    samples: int = LATENCY_SAMPLES,
    batch_size: int = LATENCY_BATCH_SIZE,
) -> float:
    """Inference milliseconds per sample: eval-mode forward passes over the first `samples`
    rows of X, `batch_size` at a time. Leaves the model in eval mode."""
    model.eval()
    X = X[:samples]
    _synchronize(X.device)  # queued work is not this model's inference
    started = time.perf_counter()
    for start in range(0, len(X), batch_size):
        model(X[start : start + batch_size])
    _synchronize(X.device)
    return (time.perf_counter() - started) * 1000 / len(X)


def _synchronize(device: torch.device) -> None:
    """Wait for the device: CUDA kernels run asynchronously, so a clock alone would not."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -------------------------------------------------------------------------------------------
# Which epoch to keep


@dataclass
class _Tracker:
    """Follows the objective across epochs: the best epoch (for reduce="best" and early
    stopping) and, for reduce="best", a CPU copy of that epoch's weights."""

    config: TrialConfig
    epoch: int = 0  # last epoch seen
    best_epoch: int = 0
    best_value: float = math.nan
    best_metrics: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    best_state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> None:
        self.epoch, self.last_metrics = epoch, metrics
        value = metrics[self.config.objective_metric]
        if not self._improves(value):
            return
        self.best_epoch, self.best_value, self.best_metrics = epoch, value, metrics
        if self.config.reduce == "best":
            self.best_state = _cpu_state(model)

    def _improves(self, value: float) -> bool:
        if self.best_epoch == 0:
            return True
        if self.config.direction == "maximize":
            return value > self.best_value
        return value < self.best_value

    def patience_ran_out(self, patience: int) -> bool:
        return patience > 0 and self.epoch - self.best_epoch >= patience

    def result(self, model: nn.Module, preprocessing: Preprocessing) -> TrialResult:
        if self.config.reduce == "best" and self.best_state is not None:
            epoch, metrics, state = self.best_epoch, self.best_metrics, self.best_state
        else:
            epoch, metrics, state = self.epoch, self.last_metrics, _cpu_state(model)
        c = self.config
        return TrialResult(
            value=metrics[c.objective_metric],
            epoch=epoch,
            epochs_run=self.epoch,
            metrics=metrics,
            pack=functools.partial(
                bundle.pack, c.model, c.hparams, c.dataset, preprocessing, state
            ),
        )


@dataclass(frozen=True)
class Snapshot:
    """A checkpoint's state, copied off the live model and optimizer: copying costs a few
    times less than serializing, so training goes on at once and `to_bytes` runs later,
    on the outbox's thread, and only for checkpoints that are still the newest."""

    state: dict[str, Any]

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(self.state, buffer)
        return buffer.getvalue()


@dataclass
class _TrainingState:
    """Everything a resumed trial needs to go on exactly where it stopped."""

    model: nn.Module
    optimizer: Optimizer
    scheduler: LRScheduler | None
    generator: torch.Generator
    tracker: _Tracker

    def snapshot(self, epoch: int, train_seconds: float) -> Snapshot:
        t = self.tracker
        state: dict[str, Any] = {
            "epoch": epoch,
            "train_seconds": train_seconds,
            "model": _cpu_state(self.model),
            "optimizer": _cpu_copy(self.optimizer.state_dict()),
            "scheduler": _cpu_copy(self.scheduler.state_dict()) if self.scheduler else None,
            "device": self.generator.device.type,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "tracker": [
                t.epoch,
                t.best_epoch,
                t.best_value,
                t.best_metrics,
                t.last_metrics,
                t.best_state,
            ],
        }
        return Snapshot(state)

    def restore(self, data: bytes, device: torch.device) -> tuple[int, float]:
        """Load a snapshot; returns the epoch it was taken after and the training seconds
        until then."""
        # On the CPU: load_state_dict copies to the model's device, and the kept best weights
        # stay CPU tensors, loadable anywhere.
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        # Random states only fit the same kind of device: resumed elsewhere (a CPU checkpoint
        # on a GPU worker, or fewer GPUs), batches are shuffled from the trial's seed instead.
        if state["device"] == device.type:
            self.generator.set_state(state["generator"])
        if state["cuda_rng"] and len(state["cuda_rng"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        t = self.tracker
        (t.epoch, t.best_epoch, t.best_value, t.best_metrics, t.last_metrics, t.best_state) = state[
            "tracker"
        ]
        # Checkpoints from before train_seconds was kept count from the resume point.
        return int(state["epoch"]), float(state.get("train_seconds", 0.0))


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _cpu_copy(value: Any) -> Any:
    """A copy of a state dict that training no longer changes: tensors copied to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_cpu_copy(v) for v in value)
    return value
