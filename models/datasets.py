"""The datasets scikit-learn ships inside its package, split and standardized for training.

Nothing here downloads: every loader reads files bundled with scikit-learn or generates data.
This module imports numpy and scikit-learn only, never torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import datasets as skdata
from sklearn.model_selection import train_test_split

from sweep.models import catalog, plugins

Array = np.ndarray


@dataclass(frozen=True)
class Preprocessing:
    """What samples went through before training, and what a trained model's outputs mean:
    what a model needs to take raw samples and answer in the data's own units and labels."""

    task: str
    input_shape: tuple[int, ...]
    n_outputs: int
    x_mean: Array | None  # per flattened feature; None: features were not standardized
    x_std: Array | None
    y_mean: float  # regression: original = y * y_std + y_mean
    y_std: float
    classes: tuple[Any, ...] | None  # class index -> label; None: the index is the label


@dataclass(frozen=True)
class Dataset:
    """Train and validation splits, standardized with the train split's statistics."""

    X_train: Array  # float32, (n, *input_shape)
    y_train: Array  # int64 class indices for classification; float32 for binary and regression
    X_val: Array
    y_val: Array
    task: str  # "classification" | "binary" | "regression"
    n_features: int  # features per sample, flattened
    n_outputs: int  # classes for classification; 1 for binary and regression
    input_shape: tuple[int, ...]  # one sample's shape: (64,) for digits, (1, 8, 8) for digits_image
    y_mean: float = 0.0  # regression targets were standardized: original = y * y_std + y_mean
    y_std: float = 1.0
    # Features were standardized per flattened column: x = (raw - x_mean) / x_std; None when
    # they were not (standardize=false). A trained model needs these to take raw inputs.
    x_mean: Array | None = None
    x_std: Array | None = None
    classes: tuple[Any, ...] | None = None  # class index -> its label, for classification/binary

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(
            task=self.task,
            input_shape=self.input_shape,
            n_outputs=self.n_outputs,
            x_mean=self.x_mean,
            x_std=self.x_std,
            y_mean=self.y_mean,
            y_std=self.y_std,
            classes=self.classes,
        )


def _synthetic(options: dict[str, int | float]) -> tuple[Array, Array]:
    opts = catalog.dataset_options("synthetic", options)
    return skdata.make_classification(
        n_samples=int(opts["n_samples"]),
        n_features=int(opts["n_features"]),
        n_informative=int(opts["n_informative"]),
        n_redundant=0,
        n_classes=int(opts["n_classes"]),
        class_sep=float(opts["class_sep"]),
        random_state=int(opts["seed"]),
    )


_BUNDLED: dict[str, Callable[..., Any]] = {
    "digits": skdata.load_digits,
    "digits_image": skdata.load_digits,
    "iris": skdata.load_iris,
    "wine": skdata.load_wine,
    "breast_cancer": skdata.load_breast_cancer,
    "diabetes": skdata.load_diabetes,
}

_IMAGE_SHAPES: dict[str, tuple[int, ...]] = {"digits_image": (1, 8, 8)}


def _raw(name: str, options: dict[str, int | float]) -> tuple[Array, Array, tuple[Any, ...] | None]:
    """Samples, targets, and the class labels (None: the targets' indices are the labels)."""
    if name == "synthetic":
        X, y = _synthetic(options)
        return X, y, None
    if name in _BUNDLED:
        bunch = _BUNDLED[name]()
        names = bunch.get("target_names")
        return bunch.data, bunch.target, tuple(names.tolist()) if names is not None else None
    plugin = plugins.dataset_plugins()[name]
    X, y = plugins.resolve(plugin.load)()
    return np.asarray(X), np.asarray(y), plugin.classes


def _standardize(train: Array, val: Array) -> tuple[Array, Array, Array, Array]:
    """Scale both splits by the train split's mean and std; a constant column keeps std 1."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std == 0, 1.0, std)
    return (train - mean) / std, (val - mean) / std, mean, std


def _targets(y: Array, task: str) -> Array:
    return y.astype(np.int64) if task == "classification" else y.astype(np.float32)


def load_dataset(
    name: str,
    options: dict[str, int | float] | None = None,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    standardize: bool = True,
) -> Dataset:
    """Load a bundled dataset and split it with a fixed seed.

    Raises:
        ValueError: unknown dataset, or scikit-learn refused the options or the split (for
            instance too few samples per class for a stratified split).
    """
    if name not in catalog.datasets():
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(catalog.datasets())}")
    X, y, classes = _raw(name, options or {})
    plugin = plugins.dataset_plugins().get(name)
    image = plugin.image_shape if plugin is not None else _IMAGE_SHAPES.get(name)
    shape = image or (int(np.prod(X.shape[1:])),)
    task = catalog.datasets()[name].task
    return prepare(X, y, task, shape, val_fraction, split_seed, standardize, classes)


def prepare(
    X: Array,
    y: Array,
    task: str,
    shape: tuple[int, ...],
    val_fraction: float = 0.2,
    split_seed: int = 0,
    standardize: bool = True,
    classes: tuple[Any, ...] | None = None,
) -> Dataset:
    """Split samples (stratified by class, but for regression) with a fixed seed, and scale
    features (and regression targets) by the train split's statistics."""
    X = X.reshape(len(X), -1)
    stratify = y if task != "regression" else None
    X_tr, X_va, y_tr, y_va = train_test_split(
        X, y, test_size=val_fraction, random_state=split_seed, stratify=stratify
    )
    X_tr, X_va = X_tr.astype(np.float64), X_va.astype(np.float64)
    y_mean, y_std = 0.0, 1.0
    x_mean = x_std = None
    if standardize:
        X_tr, X_va, x_mean, x_std = _standardize(X_tr, X_va)
        if task == "regression":
            y_tr, y_va, mean, std = _standardize(y_tr.astype(np.float64), y_va.astype(np.float64))
            y_mean, y_std = float(mean), float(std)
    return Dataset(
        X_train=X_tr.astype(np.float32).reshape(-1, *shape),
        y_train=_targets(y_tr, task),
        X_val=X_va.astype(np.float32).reshape(-1, *shape),
        y_val=_targets(y_va, task),
        task=task,
        n_features=int(X.shape[1]),
        n_outputs=int(y.max()) + 1 if task == "classification" else 1,
        input_shape=shape,
        y_mean=y_mean,
        y_std=y_std,
        x_mean=x_mean,
        x_std=x_std,
        classes=classes if task != "regression" else None,
    )


def for_spec(dataset: dict[str, Any], uploaded: tuple[Array, Array] | None = None) -> Dataset:
    """The data of a spec's dataset (as the service stored it, every default spelled out):
    bundled and plugin datasets are loaded here; an uploaded one (the spec names its sha256)
    is made of its arrays, `uploaded`.

    Raises:
        ValueError: an uploaded dataset without its arrays, or as load_dataset.
    """
    split = (
        float(dataset.get("val_fraction", 0.2)),
        int(dataset.get("split_seed", 0)),
        bool(dataset.get("standardize", True)),
    )
    if "sha256" not in dataset:
        return load_dataset(dataset["name"], dataset.get("options") or {}, *split)
    if uploaded is None:
        raise ValueError(
            f"dataset {dataset['name']!r} was uploaded: its arrays are needed "
            f"(GET /api/v1/datasets/content/{dataset['sha256']})"
        )
    X, y = uploaded
    classes = tuple(dataset["classes"]) if dataset.get("classes") else None
    shape = tuple(dataset["input_shape"])
    return prepare(X, y, dataset["task"], shape, *split, classes)
