"""What a spec may name: models, datasets, hyperparameters and the metrics each task reports.

This module imports nothing heavy (no torch, no scikit-learn) so the service can validate specs
without the training stack installed. The worker's registry builds the real objects from the
same names, and a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Task = Literal["classification", "binary", "regression"]
Scalar = int | float | str | bool

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


@dataclass(frozen=True)
class Hyperparameter:
    """One knob a trial can set: its type, bounds or choices, and its default."""

    kind: Literal["float", "int", "choice", "bool"]
    default: Scalar
    low: float | None = None  # inclusive lower bound
    high: float | None = None  # inclusive upper bound
    low_open: bool = False  # True: the value must be strictly greater than low
    high_open: bool = False  # True: the value must be strictly less than high
    choices: tuple[Scalar, ...] = ()
    help: str = ""

    def check(self, value: object) -> str | None:
        """Return why `value` is not acceptable, or None when it is."""
        if self.kind == "bool":
            return None if isinstance(value, bool) else "must be true or false"
        if self.kind == "choice":
            # Type-strict: True is not 1, and 3.0 is not the kernel size 3.
            if any(type(c) is type(value) and c == value for c in self.choices):
                return None
            return f"must be one of {list(self.choices)}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number ({self.kind})"
        if self.kind == "int" and not is_integral(value):
            return "must be an integer"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"must be {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return f"must be {'<' if self.high_open else '<='} {self.high}"
        return None


def is_integral(value: int | float) -> bool:
    """Whether a number is a whole number (without float(), which overflows on huge ints)."""
    return isinstance(value, int) or value.is_integer()


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
    "activation": Hyperparameter("choice", "relu", choices=ACTIVATIONS),
    "dropout": Hyperparameter("float", 0.0, low=0.0, high=1.0, high_open=True),
}

MLP_HYPERPARAMETERS: dict[str, Hyperparameter] = {
    "hidden_layers": Hyperparameter("int", 2, low=1, high=16),
    "hidden_units": Hyperparameter("int", 64, low=1, high=8192),
    "batch_norm": Hyperparameter("bool", False),
}

CNN_HYPERPARAMETERS: dict[str, Hyperparameter] = {
    "channels": Hyperparameter("int", 16, low=1, high=512, help="filters in the first conv"),
    "conv_layers": Hyperparameter("int", 2, low=1, high=3, help="conv+pool blocks"),
    "kernel_size": Hyperparameter("choice", 3, choices=(1, 3, 5)),
    "fc_units": Hyperparameter("int", 64, low=1, high=8192),
    "batch_norm": Hyperparameter("bool", True),
}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    inputs: Literal["any", "image"]  # "image": needs a dataset with an image shape
    hyperparameters: dict[str, Hyperparameter]


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


MODELS: dict[str, ModelInfo] = {
    "mlp": ModelInfo("mlp", "any", {**TRAINING_HYPERPARAMETERS, **MLP_HYPERPARAMETERS}),
    "cnn": ModelInfo("cnn", "image", {**TRAINING_HYPERPARAMETERS, **CNN_HYPERPARAMETERS}),
}

DATASETS: dict[str, DatasetInfo] = {
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


BUNDLED_MODELS = tuple(MODELS)
BUNDLED_DATASETS = tuple(DATASETS)


def _add_plugins() -> None:
    """Models and datasets of installed plugin packages join the catalog (sweep.models.plugins)."""
    from sweep.models import plugins

    for name, model in plugins.model_plugins().items():
        if name in MODELS:
            raise ValueError(f"plugin model {name!r} has the name of a bundled one")
        knobs = {**TRAINING_HYPERPARAMETERS, **model.hyperparameters}
        MODELS[name] = ModelInfo(name, model.inputs, knobs)
    for name, dataset in plugins.dataset_plugins().items():
        if name in DATASETS:
            raise ValueError(f"plugin dataset {name!r} has the name of a bundled one")
        DATASETS[name] = DatasetInfo(name, dataset.task, image=dataset.image_shape is not None)


_add_plugins()


def objective_metrics(task: str) -> tuple[str, ...]:
    """Metrics of a task that can serve as an objective."""
    return TASK_METRICS[task] + COST_METRICS


def resolve_hyperparameters(model: str, values: dict[str, Scalar]) -> dict[str, Scalar]:
    """A trial's full hyperparameters: the model's defaults overlaid with `values`.

    `values` are the trial's sampled params merged with the spec's fixed values; names the
    model does not know are kept, so plugins can read their own.
    """
    defaults = {name: hp.default for name, hp in MODELS[model].hyperparameters.items()}
    resolved = {**defaults, **values}
    for name, hp in MODELS[model].hyperparameters.items():
        if hp.kind == "int" and isinstance(resolved[name], float):
            resolved[name] = int(resolved[name])
    return resolved


def dataset_options(name: str, options: dict[str, int | float]) -> dict[str, int | float]:
    """A dataset's options with defaults filled in."""
    info = DATASETS[name]
    return {key: options.get(key, opt.default) for key, opt in info.options.items()}
