"""Models and datasets that installed packages add, through entry points:

    [project.entry-points."sweep.models"]
    tiny_resnet = "my_package:TINY_RESNET"      # a ModelPlugin
    [project.entry-points."sweep.datasets"]
    moons = "my_package:MOONS"                  # a DatasetPlugin

The objects an entry point names are declarations: importing them must not need torch, so the
server (which validates specs against them) can load them too. What builds or loads is named
by a "module:function" string, imported only on workers when a trial needs it. Nothing in a
spec names code: a spec names a plugin as it names a bundled model or dataset.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:  # sweep.models.catalog imports this module to add the plugins it finds
    from sweep.models.catalog import Hyperparameter, Task


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
