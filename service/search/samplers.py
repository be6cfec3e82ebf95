"""The samplers a spec may name: one record each, with its options, the spaces and studies it
can serve, and how it is built."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from sweep.models.plugins import Hyperparameter
from sweep.service.search.options import POSITIVE, SWITCH, count, fraction
from sweep.service.search.space import finite_values


@dataclass(frozen=True)
class SamplerKind:
    """One sampler: its options and which spaces and studies it can serve."""

    options: dict[str, Hyperparameter]
    # (spec, options with the seed) -> the sampler
    build: Callable[[dict[str, Any], dict[str, Any]], optuna.samplers.BaseSampler]
    # What it builds: an option a spec leaves out keeps this class's default.
    cls: type[optuna.samplers.BaseSampler]
    categorical: bool = True  # False: numbers only (it would sample categories at random)
    conditional: bool = False  # parameters that exist only under a condition
    finite_only: bool = False  # every parameter must have finitely many values
    multi_objective: bool = True
    # Its ask may run before the claim it is for, on the history as the previous claim left
    # it (sweep.service.search.optimizer): it keeps no state but the study's.
    asks_ahead: bool = False


def _grid(spec: dict[str, Any], options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    grid = {name: finite_values(p) for name, p in spec["search_space"].items()}
    return optuna.samplers.GridSampler(grid, **options)  # type: ignore[arg-type]


SAMPLERS: dict[str, SamplerKind] = {
    "tpe": SamplerKind(
        cls=optuna.samplers.TPESampler,
        options={
            "n_startup_trials": count(0),
            "n_ei_candidates": count(1),
            "multivariate": SWITCH,
            "group": SWITCH,
            "constant_liar": SWITCH,
            "consider_endpoints": SWITCH,
            "prior_weight": POSITIVE,
        },
        conditional=True,
        asks_ahead=True,
        build=lambda spec, options: optuna.samplers.TPESampler(**options),
    ),
    "random": SamplerKind(
        cls=optuna.samplers.RandomSampler,
        options={},
        conditional=True,
        build=lambda spec, options: optuna.samplers.RandomSampler(**options),
    ),
    "cmaes": SamplerKind(
        cls=optuna.samplers.CmaEsSampler,
        options={
            "n_startup_trials": count(0),
            "sigma0": POSITIVE,
            "popsize": count(2),
            "use_separable_cma": SWITCH,
            "with_margin": SWITCH,
            "lr_adapt": SWITCH,
            "consider_pruned_trials": SWITCH,
        },
        categorical=False,
        multi_objective=False,
        build=lambda spec, options: optuna.samplers.CmaEsSampler(
            warn_independent_sampling=False, **options
        ),
    ),
    "gp": SamplerKind(
        cls=optuna.samplers.GPSampler,
        options={"n_startup_trials": count(0), "deterministic_objective": SWITCH},
        build=lambda spec, options: optuna.samplers.GPSampler(
            warn_independent_sampling=False, **options
        ),
    ),
    "qmc": SamplerKind(
        cls=optuna.samplers.QMCSampler,
        options={
            "qmc_type": Hyperparameter("choice", "sobol", choices=("sobol", "halton")),
            "scramble": SWITCH,
        },
        categorical=False,
        build=lambda spec, options: optuna.samplers.QMCSampler(
            warn_independent_sampling=False, warn_asynchronous_seeding=False, **options
        ),
    ),
    "grid": SamplerKind(cls=optuna.samplers.GridSampler, options={}, finite_only=True, build=_grid),
    "nsga2": SamplerKind(
        cls=optuna.samplers.NSGAIISampler,
        options={
            "population_size": count(2),
            "mutation_prob": fraction(),
            "crossover_prob": fraction(),
            "swapping_prob": fraction(),
        },
        build=lambda spec, options: optuna.samplers.NSGAIISampler(**options),
    ),
}


def make_sampler(spec: dict[str, Any]) -> optuna.samplers.BaseSampler:
    sampler = spec["sampler"]
    return SAMPLERS[sampler["name"]].build(spec, {"seed": sampler["seed"], **sampler["options"]})
