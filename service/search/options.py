"""Building blocks of the samplers' and pruners' option tables: an option's type and bounds.

An option a spec leaves out is not passed: it keeps Optuna's default, which the docs read from
the class's signature (`optuna_default`); the `default` of these records is unused."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from sweep.models.plugins import Hyperparameter


@dataclass(frozen=True)
class AutoOr(Hyperparameter):
    """An option that is either the string "auto" or a value checked as usual."""

    def check(self, value: object) -> str | None:
        return None if value == "auto" else super().check(value)


def count(low: int) -> Hyperparameter:
    return Hyperparameter("int", 0, low=low, high=1_000_000)


def fraction() -> Hyperparameter:
    return Hyperparameter("float", 0.5, low=0.0, high=1.0)


SWITCH = Hyperparameter("bool", False)
POSITIVE = Hyperparameter("float", 1.0, low=0.0, high=1e9, low_open=True)


def optuna_default(cls: Any, option: str) -> Any:
    """What Optuna's `cls` uses for `option` when it is not given (inspect.Parameter.empty:
    it must be given)."""
    return inspect.signature(cls).parameters[option].default
