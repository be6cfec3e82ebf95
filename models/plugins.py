"""How a model or a dataset is declared, bundled or added by an installed package, and the
packages' declarations, found through entry points:

    [project.entry-points."sweep.models"]
    tiny_resnet = "my_package:TINY_RESNET"      # a ModelPlugin
    [project.entry-points."sweep.datasets"]
    moons = "my_package:MOONS"                  # a DatasetPlugin

A declaration is data: importing it must not need torch, so the server (which validates specs
against it) loads it too. What builds or loads is named by a "module:function" string, imported
only on workers when a trial needs it. Nothing in a spec names code: a spec names a plugin as
it names a bundled model or dataset. This module imports the standard library only.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal, TypeVar

Task = Literal["classification", "binary", "regression"]
Scalar = int | float | str | bool


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


@dataclass(frozen=True)
class ModelPlugin:
    # "module:function" called as function(input_shape, n_outputs, hparams) -> torch.nn.Module
    build: str
    # Its own hyperparameters, beside the training ones every model has (lr, optimizer...).
    hyperparameters: dict[str, Hyperparameter] = field(default_factory=dict)
    inputs: Literal["any", "image"] = "any"


@dataclass(frozen=True)
class DatasetPlugin:
    # "module:function" called as function() -> (X, y): numpy arrays, y class indices or values
    load: str
    task: Task
    # One sample's shape when samples are images (channels, height, width); else flat.
    image_shape: tuple[int, int, int] | None = None
    # The label of each class index, e.g. ("cat", "dog"), which a loaded model predicts;
    # None: the indices are the labels.
    classes: tuple[Scalar, ...] | None = None


P = TypeVar("P", ModelPlugin, DatasetPlugin)


def _discover(group: str, kind: type[P]) -> dict[str, P]:
    found: dict[str, P] = {}
    for entry in entry_points(group=group):
        declared = entry.load()
        if not isinstance(declared, kind):
            raise TypeError(f"entry point {entry.name} ({entry.value}) is not a {kind.__name__}")
        found[entry.name] = declared
    return found


@functools.cache
def model_plugins() -> dict[str, ModelPlugin]:
    return _discover("sweep.models", ModelPlugin)


@functools.cache
def dataset_plugins() -> dict[str, DatasetPlugin]:
    return _discover("sweep.datasets", DatasetPlugin)


def resolve(target: str) -> Callable[..., Any]:
    """The function a "module:function" string names."""
    module, _, name = target.partition(":")
    function: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return function
