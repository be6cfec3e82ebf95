"""The datasets scikit-learn ships inside its package, split and standardized for training.

Nothing here downloads: every loader reads files bundled with scikit-learn or generates data.
This module imports numpy and scikit-learn only, never torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn import datasets as skdata
from sklearn.model_selection import train_test_split

from sweep.models import catalog, plugins

Array = np.ndarray


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


_BUNDLED: dict[str, Callable[[], tuple[Array, Array]]] = {
    "digits": lambda: skdata.load_digits(return_X_y=True),
    "digits_image": lambda: skdata.load_digits(return_X_y=True),
    "iris": lambda: skdata.load_iris(return_X_y=True),
    "wine": lambda: skdata.load_wine(return_X_y=True),
    "breast_cancer": lambda: skdata.load_breast_cancer(return_X_y=True),
    "diabetes": lambda: skdata.load_diabetes(return_X_y=True),
}

_IMAGE_SHAPES: dict[str, tuple[int, ...]] = {"digits_image": (1, 8, 8)}


def _raw(name: str, options: dict[str, int | float]) -> tuple[Array, Array]:
    if name == "synthetic":
        return _synthetic(options)
    if name in _BUNDLED:
        return _BUNDLED[name]()
    X, y = plugins.resolve(plugins.dataset_plugins()[name].load)()
    return np.asarray(X), np.asarray(y)


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
    X, y = _raw(name, options or {})
    plugin = plugins.dataset_plugins().get(name)
    image = plugin.image_shape if plugin is not None else _IMAGE_SHAPES.get(name)
    shape = image or (int(np.prod(X.shape[1:])),)
    return prepare(
        X, y, catalog.datasets()[name].task, shape, val_fraction, split_seed, standardize
    )


def prepare(
    X: Array,
    y: Array,
    task: str,
    shape: tuple[int, ...],
    val_fraction: float = 0.2,
    split_seed: int = 0,
    standardize: bool = True,
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
    if standardize:
        X_tr, X_va, _, _ = _standardize(X_tr, X_va)
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
    )
