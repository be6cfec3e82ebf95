"""The pruners a spec may name: one record each, with its options (those it cannot do
without among them), and how it is built; and the default a spec without one gets."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from sweep.models.plugins import Hyperparameter
from sweep.service.search.options import AutoOr, count


@dataclass(frozen=True)
class PrunerKind:
    """One pruner: its options and which of them it needs, and how it is built."""

    options: dict[str, Hyperparameter]
    build: Callable[..., optuna.pruners.BasePruner]  # (**options), or (wrapped, **options)
    required: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()  # two options of which at least one must be given
    wraps: bool = False  # wraps another pruner (the spec's pruner.wrapped)


_STEPS = {"n_warmup_steps": count(0), "interval_steps": count(1)}
_HISTORY = {**_STEPS, "n_startup_trials": count(0), "n_min_trials": count(1)}
_RATE = Hyperparameter("int", 3, low=2, high=1000)
_BOUND = Hyperparameter("float", 0.0, low=-1e300, high=1e300)

PRUNERS: dict[str, PrunerKind] = {
    "none": PrunerKind(options={}, build=optuna.pruners.NopPruner),
    "median": PrunerKind(options=_HISTORY, build=optuna.pruners.MedianPruner),
    "percentile": PrunerKind(
        options={**_HISTORY, "percentile": Hyperparameter("float", 50.0, low=0.0, high=100.0)},
        required=("percentile",),
        build=optuna.pruners.PercentilePruner,
    ),
    "successive_halving": PrunerKind(
        options={
            "min_resource": AutoOr("int", 1, low=1, high=1_000_000),
            "reduction_factor": _RATE,
            "min_early_stopping_rate": count(0),
            "bootstrap_count": count(0),
        },
        build=optuna.pruners.SuccessiveHalvingPruner,
    ),
    "hyperband": PrunerKind(
        options={
            "min_resource": count(1),
            "max_resource": AutoOr("int", 1, low=1, high=1_000_000),
            "reduction_factor": _RATE,
            "bootstrap_count": count(0),
        },
        build=optuna.pruners.HyperbandPruner,
    ),
    "threshold": PrunerKind(
        options={**_STEPS, "lower": _BOUND, "upper": _BOUND},
        one_of=("lower", "upper"),
        build=optuna.pruners.ThresholdPruner,
    ),
    "patient": PrunerKind(
        options={"patience": count(0), "min_delta": Hyperparameter("float", 0.0, low=0.0)},
        required=("patience",),
        wraps=True,
        build=optuna.pruners.PatientPruner,
    ),
    "wilcoxon": PrunerKind(
        options={
            "p_threshold": Hyperparameter("float", 0.1, low=0.0, high=1.0),
            "n_startup_steps": count(0),
        },
        build=optuna.pruners.WilcoxonPruner,
    ),
}
# What a spec without a pruner gets: the median pruner, from the second epoch on (never at the
# first, where a slow starter looks worst), once 5 trials have finished. benchmarks/pruning.py
# (TPE, 40 trials; the digits MLP x 20 epochs and the digits CNN x 6, seeds 0-2): the best
# val_accuracy stayed within 0.28 point (one validation image) of the unpruned sweep's on
# every seed of both models, with 64% (MLP) and 66% (CNN) of the epochs. The percentile-33
# pruners tried saved more but lost over 0.5 point on some seed: prunable from epoch 1 (the
# former default), 0.56 (MLP) and 0.83 (CNN); from epoch 2, 0.83 (MLP) and 0.56 (CNN); from
# epoch 3, 0.83 (MLP). On seeds 3 and 4, not used to choose it, it lost nothing.
DEFAULT_PRUNER: dict[str, Any] = {
    "name": "median",
    "options": {"n_startup_trials": 5, "n_warmup_steps": 2},
}


def default_pruner(n_objectives: int) -> dict[str, Any]:
    """Pruning needs a single objective."""
    if n_objectives > 1:
        return {"name": "none", "options": {}, "wrapped": None}
    return {"wrapped": None, **copy.deepcopy(DEFAULT_PRUNER)}


def make_pruner(pruner: dict[str, Any]) -> optuna.pruners.BasePruner:
    kind = PRUNERS[pruner["name"]]
    options = dict(pruner["options"])
    if kind.wraps:
        wrapped = pruner.get("wrapped")
        return kind.build(make_pruner(wrapped) if wrapped else None, **options)
    return kind.build(**options)


def cannot_prune_yet(pruner: dict[str, Any], epoch: int, finished: int) -> bool:
    """Whether the spec's pruner certainly lets a trial that reported `epoch` go on while at
    most `finished` trials of its experiment have finished: then the study need not be asked
    (reports from many workers would otherwise queue for it). Exact, from the rules the
    pruner itself applies first; False whenever asking could say otherwise."""
    built = make_pruner(pruner)
    if isinstance(built, optuna.pruners.NopPruner):
        return True
    if isinstance(built, optuna.pruners.PercentilePruner):  # the median pruner is one too
        # It prunes against completed trials, of which there are at most `finished`.
        return finished == 0 or finished < built._n_startup_trials or epoch < built._n_warmup_steps
    return False
