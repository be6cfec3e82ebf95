"""What a spec may name: models, datasets, hyperparameters and the metrics each task reports.

The catalog is built on first use from the bundled declarations (sweep.models.mlp and
sweep.models.cnn, declared as plugins declare theirs) and from installed plugins' entry points,
so a plugin's own module may import anything of sweep.models. Nothing here imports torch or
scikit-learn: the service validates specs without the training stack installed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal

from sweep.models import cnn, mlp
from sweep.models.plugins import DatasetPlugin, ModelPlugin, dataset_plugins, model_plugins

# The vocabulary of declarations, also spoken here.
from sweep.models.plugins import Hyperparameter as Hyperparameter
from sweep.models.plugins import Scalar as Scalar
from sweep.models.plugins import Task as Task
from sweep.models.plugins import is_integral as is_integral

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop")
ACTIVATIONS = ("relu", "sigmoid", "tanh", "gelu", "leaky_relu")
LR_SCHEDULES = ("none", "step", "cosine", "exponential")

# Metrics every epoch report carries, by task. epoch_seconds and lr are reported too but are
# not objectives.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("train_loss", "val_loss", "val_accuracy"),
    "binary": ("train_loss", "val_loss", "val_accuracy"),
    "regression": ("train_loss", "val_loss", "val_mae", "val_r2"),
}
EXTRA_METRICS = ("epoch_seconds", "lr")
# What a model costs rather than how good it is; every task reports these, and they may be
# objectives, e.g. to trade val_accuracy against n_params:
#   n_params       trainable parameters (the same every epoch)
#   latency_ms     eval-mode forward time per validation sample after the epoch, in batches
#   train_seconds  training time (not validation) summed over the epochs so far
COST_METRICS = ("n_params", "latency_ms", "train_seconds")


TRAINING_HYPERPARAMETERS: dict[str, Hyperparameter] = {
    "lr": Hyperparameter("float", 1e-3, low=0.0, high=10.0, low_open=True, help="learning rate"),
    "batch_size": Hyperparameter("int", 64, low=1, high=65536),
    "epochs": Hyperparameter("int", 10, low=1, high=10000),
    "optimizer": Hyperparameter("choice", "adam", choices=OPTIMIZERS),
    "momentum": Hyperparameter(
        "float", 0.9, low=0.0, high=1.0, high_open=True, help="for optimizer=momentum and rmsprop"
    ),
    "weight_decay": Hyperparameter("float", 0.0, low=0.0, high=1.0, help="L2 penalty"),
    "l1": Hyperparameter("float", 0.0, low=0.0, high=1.0, help="L1 penalty on weights"),
    "clip_grad_norm": Hyperparameter("float", 0.0, low=0.0, high=1e6, help="0 disables"),
    "lr_schedule": Hyperparameter("choice", "none", choices=LR_SCHEDULES),
    "lr_step_size": Hyperparameter("int", 10, low=1, high=10000, help="epochs per step decay"),
    "lr_gamma": Hyperparameter(
        "float",
        0.9,
        low=0.0,
        high=1.0,
        low_open=True,
        help="decay factor for step and exponential schedules",
    ),
    "patience": Hyperparameter(
        "int", 0, low=0, high=10000, help="early stopping: epochs without improvement; 0 disables"
    ),
    "seed": Hyperparameter(
        "int", 0, low=0, high=2**31 - 1, help="base seed; a trial trains with seed + its number"
    ),
    "checkpoint_every": Hyperparameter(
        "int", 1, low=0, high=10000, help="epochs between checkpoints; 0: only on shutdown"
    ),
    "checkpoint_share": Hyperparameter(
        "float",
        0.05,
        low=0.0,
        high=1.0,
        low_open=True,
        help="the most of a trial's time spent sending checkpoints: a due one is skipped "
        "while sending the last took more than this share of the time since",
    ),
    "activation": Hyperparameter("choice", "relu", choices=ACTIVATIONS),
    "dropout": Hyperparameter("float", 0.0, low=0.0, high=1.0, high_open=True),
}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    inputs: Literal["any", "image"]  # "image": needs a dataset with an image shape
    hyperparameters: dict[str, Hyperparameter]  # the training ones and the model's own
    build: str  # "module:function", as ModelPlugin.build


@dataclass(frozen=True)
class DatasetOption:
    default: int | float
    low: float
    high: float
    kind: Literal["int", "float"] = "int"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    task: Task
    image: bool = False  # samples are (channels, height, width) images
    options: dict[str, DatasetOption] = field(default_factory=dict)


BUNDLED_DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", "classification"),
    "digits_image": DatasetInfo("digits_image", "classification", image=True),
    "iris": DatasetInfo("iris", "classification"),
    "wine": DatasetInfo("wine", "classification"),
    "breast_cancer": DatasetInfo("breast_cancer", "binary"),
    "diabetes": DatasetInfo("diabetes", "regression"),
    "synthetic": DatasetInfo(
        "synthetic",
        "classification",
        options={
            "n_samples": DatasetOption(1000, 20, 1_000_000),
            "n_features": DatasetOption(20, 2, 4096),
            "n_informative": DatasetOption(10, 1, 4096),
            "n_classes": DatasetOption(2, 2, 100),
            "class_sep": DatasetOption(1.0, 0.01, 100.0, kind="float"),
            "seed": DatasetOption(0, 0, 2**31 - 1),
        },
    ),
}

BUNDLED_MODELS: dict[str, ModelPlugin] = {"mlp": mlp.MODEL, "cnn": cnn.MODEL}


def _model(name: str, declared: ModelPlugin) -> ModelInfo:
    knobs = {**TRAINING_HYPERPARAMETERS, **declared.hyperparameters}
    return ModelInfo(name, declared.inputs, knobs, declared.build)


def _dataset(name: str, declared: DatasetPlugin) -> DatasetInfo:
    return DatasetInfo(name, declared.task, image=declared.image_shape is not None)


@functools.cache
def models() -> dict[str, ModelInfo]:
    """Every model a spec may name: the bundled ones and the installed plugins'."""
    found = {name: _model(name, declared) for name, declared in BUNDLED_MODELS.items()}
    for name, declared in model_plugins().items():
        if name in found:
            raise ValueError(f"plugin model {name!r} has the name of a bundled one")
        found[name] = _model(name, declared)
    return found


@functools.cache
def datasets() -> dict[str, DatasetInfo]:
    """Every dataset a spec may name by itself: the bundled ones and the installed plugins'
    (uploaded datasets belong to a project and are looked up there)."""
    found = dict(BUNDLED_DATASETS)
    for name, declared in dataset_plugins().items():
        if name in found:
            raise ValueError(f"plugin dataset {name!r} has the name of a bundled one")
        found[name] = _dataset(name, declared)
    return found


def objective_metrics(task: str) -> tuple[str, ...]:
    """Metrics of a task that can serve as an objective."""
    return TASK_METRICS[task] + COST_METRICS


def resolve_hyperparameters(model: str, values: dict[str, Scalar]) -> dict[str, Scalar]:
    """A trial's full hyperparameters: the model's defaults overlaid with `values`.

    `values` are the trial's sampled params merged with the spec's fixed values; names the
    model does not know are kept, so plugins can read their own.
    """
    knobs = models()[model].hyperparameters
    defaults = {name: hp.default for name, hp in knobs.items()}
    resolved = {**defaults, **values}
    for name, hp in knobs.items():
        if hp.kind == "int" and isinstance(resolved[name], float):
            resolved[name] = int(resolved[name])
    return resolved


def dataset_options(name: str, options: dict[str, int | float]) -> dict[str, int | float]:
    """A dataset's options with defaults filled in."""
    info = datasets()[name]
    return {key: options.get(key, opt.default) for key, opt in info.options.items()}
