"""Optuna behind one package, the only part of the service that imports it: the samplers and
pruners a spec may name (one record each), what a search space means, the checks a spec's
search settings pass, the in-memory studies that suggest and prune (the Optimizer), and
Optuna's plots and study export.

The rest of the service uses the names below.
"""

from sweep.service.search.checks import check_spec
from sweep.service.search.optimizer import Optimizer, Suggestion
from sweep.service.search.pruners import DEFAULT_PRUNER, PRUNERS, default_pruner, make_pruner
from sweep.service.search.samplers import SAMPLERS, make_sampler
from sweep.service.search.space import (
    config_key,
    is_active,
    pareto_front,
    run_once_size,
    value_problem,
)

__all__ = [
    "DEFAULT_PRUNER",
    "PRUNERS",
    "SAMPLERS",
    "Optimizer",
    "Suggestion",
    "check_spec",
    "config_key",
    "default_pruner",
    "is_active",
    "make_pruner",
    "make_sampler",
    "pareto_front",
    "run_once_size",
    "value_problem",
]
