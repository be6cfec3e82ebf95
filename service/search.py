"""The search toolbox a spec may name: Optuna's samplers and pruners, their options, and the
spaces each accepts; plus what a search space means (distributions, conditions, finite sizes).

Everything here is data plus small factories, so validation can tell a user which sampler takes
which space before anything is stored. sweep.service.optimizer runs the studies.
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
import math
import operator
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from sweep.models.catalog import Hyperparameter
from sweep.service.errors import InvalidSpec

MAX_FINITE = 100_000  # finite spaces larger than this are treated as unbounded


@dataclass(frozen=True)
class _AutoOr(Hyperparameter):
    """An option that is either the string "auto" or a value checked as usual."""

    def check(self, value: object) -> str | None:
        return None if value == "auto" else super().check(value)


def _count(low: int) -> Hyperparameter:
    return Hyperparameter("int", 0, low=low, high=1_000_000)


def _fraction() -> Hyperparameter:
    return Hyperparameter("float", 0.5, low=0.0, high=1.0)


_SWITCH = Hyperparameter("bool", False)
_POSITIVE = Hyperparameter("float", 1.0, low=0.0, high=1e9, low_open=True)


# --- samplers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerKind:
    """One sampler: its options and which spaces and studies it can serve."""

    options: dict[str, Hyperparameter]
    # (spec, options with the seed) -> the sampler
    build: Callable[[dict[str, Any], dict[str, Any]], optuna.samplers.BaseSampler]
    categorical: bool = True  # False: numbers only (it would sample categories at random)
    conditional: bool = False  # parameters that exist only under a condition
    finite_only: bool = False  # every parameter must have finitely many values
    multi_objective: bool = True


def _grid(spec: dict[str, Any], options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    grid = {name: finite_values(p) for name, p in spec["search_space"].items()}
    return optuna.samplers.GridSampler(grid, **options)  # type: ignore[arg-type]


SAMPLERS: dict[str, SamplerKind] = {
    "tpe": SamplerKind(
        options={
            "n_startup_trials": _count(0),
            "n_ei_candidates": _count(1),
            "multivariate": _SWITCH,
            "group": _SWITCH,
            "constant_liar": _SWITCH,
            "consider_endpoints": _SWITCH,
            "prior_weight": _POSITIVE,
        },
        conditional=True,
        build=lambda spec, options: optuna.samplers.TPESampler(**options),
    ),
    "random": SamplerKind(
        options={},
        conditional=True,
        build=lambda spec, options: optuna.samplers.RandomSampler(**options),
    ),
    "cmaes": SamplerKind(
        options={
            "n_startup_trials": _count(0),
            "sigma0": _POSITIVE,
            "popsize": _count(2),
            "use_separable_cma": _SWITCH,
            "with_margin": _SWITCH,
            "lr_adapt": _SWITCH,
            "consider_pruned_trials": _SWITCH,
        },
        categorical=False,
        multi_objective=False,
        build=lambda spec, options: optuna.samplers.CmaEsSampler(
            warn_independent_sampling=False, **options
        ),
    ),
    "gp": SamplerKind(
        options={"n_startup_trials": _count(0), "deterministic_objective": _SWITCH},
        build=lambda spec, options: optuna.samplers.GPSampler(
            warn_independent_sampling=False, **options
        ),
    ),
    "qmc": SamplerKind(
        options={
            "qmc_type": Hyperparameter("choice", "sobol", choices=("sobol", "halton")),
            "scramble": _SWITCH,
        },
        categorical=False,
        build=lambda spec, options: optuna.samplers.QMCSampler(
            warn_independent_sampling=False, warn_asynchronous_seeding=False, **options
        ),
    ),
    "grid": SamplerKind(options={}, finite_only=True, build=_grid),
    "nsga2": SamplerKind(
        options={
            "population_size": _count(2),
            "mutation_prob": _fraction(),
            "crossover_prob": _fraction(),
            "swapping_prob": _fraction(),
        },
        build=lambda spec, options: optuna.samplers.NSGAIISampler(**options),
    ),
}


def make_sampler(spec: dict[str, Any]) -> optuna.samplers.BaseSampler:
    sampler = spec["sampler"]
    return SAMPLERS[sampler["name"]].build(spec, {"seed": sampler["seed"], **sampler["options"]})


# --- pruners -------------------------------------------------------------------------------

_STEPS = {"n_warmup_steps": _count(0), "interval_steps": _count(1)}
_HISTORY = {**_STEPS, "n_startup_trials": _count(0), "n_min_trials": _count(1)}
_RATE = Hyperparameter("int", 3, low=2, high=1000)
PRUNER_OPTIONS: dict[str, dict[str, Hyperparameter]] = {
    "none": {},
    "median": _HISTORY,
    "percentile": {**_HISTORY, "percentile": Hyperparameter("float", 50.0, low=0.0, high=100.0)},
    "successive_halving": {
        "min_resource": _AutoOr("int", 1, low=1, high=1_000_000),
        "reduction_factor": _RATE,
        "min_early_stopping_rate": _count(0),
        "bootstrap_count": _count(0),
    },
    "hyperband": {
        "min_resource": _count(1),
        "max_resource": _AutoOr("int", 1, low=1, high=1_000_000),
        "reduction_factor": _RATE,
        "bootstrap_count": _count(0),
    },
    "threshold": {
        **_STEPS,
        "lower": Hyperparameter("float", 0.0, low=-1e300, high=1e300),
        "upper": Hyperparameter("float", 0.0, low=-1e300, high=1e300),
    },
    "patient": {"patience": _count(0), "min_delta": Hyperparameter("float", 0.0, low=0.0)},
    "wilcoxon": {
        "p_threshold": Hyperparameter("float", 0.1, low=0.0, high=1.0),
        "n_startup_steps": _count(0),
    },
}
_PRUNER_CLASSES: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "wilcoxon": optuna.pruners.WilcoxonPruner,
}
# What a spec without a pruner gets. benchmarks/pruning.py (digits, TPE, 40 trials x 20
# epochs): it prunes a trial in the bottom third of those that reached the same epoch, from
# the second epoch on, once 5 trials have finished. On seeds 0-2 it kept the best val_accuracy
# within 0.5 point of the unpruned sweep's on every seed with 35% of its epochs (25-41%); the
# median pruner kept the best but trained 58%; percentile 25, successive halving and Hyperband
# trained 23-38% but lost 0.56-1.1 points on some seed. On seeds 3 and 4, not used to choose
# it, it trained 44% and 52% and lost at most 0.28 point.
DEFAULT_PRUNER: dict[str, Any] = {
    "name": "percentile",
    "options": {"percentile": 33.0, "n_startup_trials": 5, "n_warmup_steps": 1},
}


def default_pruner(n_objectives: int) -> dict[str, Any]:
    """Pruning needs a single objective."""
    if n_objectives > 1:
        return {"name": "none", "options": {}, "wrapped": None}
    return {"wrapped": None, **copy.deepcopy(DEFAULT_PRUNER)}


REQUIRED_PRUNER_OPTIONS = {"percentile": ("percentile",), "patient": ("patience",)}


def make_pruner(pruner: dict[str, Any]) -> optuna.pruners.BasePruner:
    options = dict(pruner["options"])
    if pruner["name"] == "patient":
        wrapped = pruner.get("wrapped")
        inner = make_pruner(wrapped) if wrapped else None
        return optuna.pruners.PatientPruner(inner, **options)
    return _PRUNER_CLASSES[pruner["name"]](**options)


# --- search spaces -------------------------------------------------------------------------


def distribution(p: dict[str, Any]) -> BaseDistribution:
    if p["type"] == "float":
        return FloatDistribution(p["low"], p["high"], log=p["log"], step=p["step"])
    if p["type"] == "int":
        return IntDistribution(p["low"], p["high"], log=p["log"], step=p["step"])
    return CategoricalDistribution(p["choices"])


def distributions(search_space: dict[str, Any]) -> dict[str, BaseDistribution]:
    """Optuna distributions for a spec's search space, in spec order."""
    return {name: distribution(p) for name, p in search_space.items()}


_COMPARISONS = {"gte": operator.ge, "gt": operator.gt, "lte": operator.le, "lt": operator.lt}


def is_active(p: dict[str, Any], params: dict[str, Any]) -> bool:
    """Whether a parameter exists in a trial whose earlier params are `params`."""
    when = p.get("when")
    if when is None:
        return True
    if when["param"] not in params:
        return False  # its parent is itself inactive
    value = params[when["param"]]
    if when.get("in") is not None and not any(
        type(c) is type(value) and c == value for c in when["in"]
    ):
        return False
    return all(
        compare(value, when[key])
        for key, compare in _COMPARISONS.items()
        if when.get(key) is not None
    )


def finite_values(p: dict[str, Any]) -> list[Any] | None:
    """Every value a parameter can take, or None when there are (practically) too many."""
    if p["type"] == "categorical":
        return list(p["choices"])
    dist = distribution(p)
    if isinstance(dist, IntDistribution):
        count = (dist.high - dist.low) // dist.step + 1
        return list(range(dist.low, dist.high + 1, dist.step)) if count <= MAX_FINITE else None
    assert isinstance(dist, FloatDistribution)
    if dist.step is None:
        return None
    count = round((dist.high - dist.low) / dist.step) + 1
    if count > MAX_FINITE:
        return None
    return [dist.low + i * dist.step for i in range(count)]


def configurations(search_space: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every configuration of a finite space, conditions applied, in a fixed order."""

    def extend(names: list[str], params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if not names:
            yield dict(params)
            return
        name, rest = names[0], names[1:]
        p = search_space[name]
        if not is_active(p, params):
            yield from extend(rest, params)
            return
        for value in finite_values(p) or ():
            params[name] = value
            yield from extend(rest, params)
            del params[name]

    yield from extend(list(search_space), {})


def space_size(search_space: dict[str, Any]) -> int | None:
    """How many distinct configurations the space holds; None when unbounded or huge."""
    values = [finite_values(p) for p in search_space.values()]
    if any(v is None for v in values):
        return None
    if any(p.get("when") for p in search_space.values()):
        count = 0
        for _ in itertools.islice(configurations(search_space), MAX_FINITE + 1):
            count += 1
        return count if count <= MAX_FINITE else None
    size = math.prod(len(v) for v in values if v is not None)
    return size if size <= MAX_FINITE else None


def value_problem(p: dict[str, Any], value: Any) -> str | None:
    """Why `value` is not a value of parameter `p`, or None when it is."""
    if p["type"] == "categorical":
        if any(type(c) is type(value) and c == value for c in p["choices"]):
            return None
        return f"must be one of {p['choices']}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    if p["type"] == "int" and not isinstance(value, int):
        return "must be an integer"
    if not p["low"] <= value <= p["high"]:
        return f"must be within [{p['low']}, {p['high']}]"
    step = p.get("step")
    if step and p["type"] == "float":
        k = (value - p["low"]) / step
        if abs(k - round(k)) > 1e-8:
            return f"must be {p['low']} plus a multiple of {step}"
    if step and p["type"] == "int" and (value - p["low"]) % step:
        return f"must be {p['low']} plus a multiple of {step}"
    return None


def run_once_size(spec: dict[str, Any]) -> int | None:
    """The space's size when each configuration runs once at most: always for a grid, and
    for any finite space unless the spec allows repeats."""
    sampler = spec["sampler"]
    if not spec["search_space"] or (sampler.get("allow_repeats") and sampler["name"] != "grid"):
        return None  # nothing searched: the same configuration n_trials times is the point
    return space_size(spec["search_space"])


def config_key(params: dict[str, Any]) -> tuple[tuple[str, str, Any], ...]:
    """What makes two configurations the same (floats compared to 12 significant digits)."""

    def canonical(value: Any) -> Any:
        return float(f"{value:.12g}") if isinstance(value, float) else value

    return tuple(sorted((k, type(v).__name__, canonical(v)) for k, v in params.items()))


def unseen_configuration(
    search_space: dict[str, Any], seen: set[Any], size: int, rng: random.Random
) -> dict[str, Any] | None:
    """A configuration of a finite space whose key is not in `seen`, picked at random; None
    when every one has been seen."""
    if len(seen) >= size:
        return None
    if len(seen) < size // 2:  # mostly unseen: random draws find one quickly
        while True:
            params: dict[str, Any] = {}
            for name, p in search_space.items():
                if is_active(p, params):
                    params[name] = rng.choice(finite_values(p) or [])
            if config_key(params) not in seen:
                return params
    left = [c for c in configurations(search_space) if config_key(c) not in seen]
    return rng.choice(left) if left else None


def pareto_front(points: list[list[float]], directions: list[str]) -> list[int]:
    """Indices of the points no other point dominates (as good on every objective and
    better on one), in input order. Exact duplicates are all kept."""
    signs = [1.0 if d == "minimize" else -1.0 for d in directions]
    costs = [[s * v for s, v in zip(signs, p, strict=True)] for p in points]
    order = sorted(range(len(costs)), key=lambda i: costs[i])
    front: list[int] = []
    for i in order:  # lexicographic order: no later point dominates an earlier one
        if not any(_dominates(costs[j], costs[i]) for j in front):
            front.append(i)
    return sorted(front)


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


# --- validation ----------------------------------------------------------------------------


def check(spec: dict[str, Any], n_objectives: int) -> None:
    """Raise InvalidSpec unless the sampler and pruner exist, take these options and can
    serve this space and number of objectives."""
    sampler = spec["sampler"]
    _check_choice("sampler", sampler, SAMPLERS)
    kind = SAMPLERS[sampler["name"]]
    _check_options("sampler", sampler, kind.options)
    _check_space(spec["search_space"], sampler["name"], kind)
    if sampler["name"] == "gp" and importlib.util.find_spec("torch") is None:
        raise InvalidSpec(
            "the gp sampler needs PyTorch on the server (install sweep with the worker extra)",
            field="sampler.name",
        )
    if n_objectives > 1 and not kind.multi_objective:
        raise InvalidSpec(
            f"sampler {sampler['name']!r} optimizes one objective; "
            f"use nsga2, tpe, gp or random for several",
            field="sampler.name",
        )
    _check_pruner("pruner", spec["pruner"])
    if n_objectives > 1 and spec["pruner"]["name"] != "none":
        raise InvalidSpec(
            "pruning needs a single objective; use pruner 'none' with several objectives",
            field="pruner.name",
        )


def _check_space(search_space: dict[str, Any], name: str, kind: SamplerKind) -> None:
    for param, p in search_space.items():
        field = f"search_space.{param}"
        try:
            distribution(p)
        except Exception as exc:  # optuna raises ValueError, decimal errors, ...
            raise InvalidSpec(str(exc), field=field) from exc
        if p.get("when") and not kind.conditional:
            raise InvalidSpec(
                f"sampler {name!r} cannot search conditional parameters; use tpe or random",
                field=f"{field}.when",
            )
        if p["type"] == "categorical" and not kind.categorical:
            raise InvalidSpec(
                f"sampler {name!r} searches numbers only; {param!r} is categorical "
                f"(use tpe, gp, nsga2 or random)",
                field=field,
            )
        if kind.finite_only and finite_values(p) is None:
            raise InvalidSpec(
                f"sampler {name!r} needs finitely many values: give {param!r} choices, "
                f"an int range or a float step",
                field=field,
            )
    if kind.finite_only and space_size(search_space) is None:
        raise InvalidSpec(f"the grid has more than {MAX_FINITE} points", field="search_space")


def _check_pruner(field: str, pruner: dict[str, Any]) -> None:
    _check_choice(field, pruner, PRUNER_OPTIONS)
    _check_options(field, pruner, PRUNER_OPTIONS[pruner["name"]])
    for option in REQUIRED_PRUNER_OPTIONS.get(pruner["name"], ()):
        if option not in pruner["options"]:
            raise InvalidSpec(
                f"pruner {pruner['name']!r} needs option {option!r}",
                field=f"{field}.options.{option}",
            )
    wrapped = pruner.get("wrapped")
    if wrapped is not None:
        if pruner["name"] != "patient":
            raise InvalidSpec("only the patient pruner wraps another", field=f"{field}.wrapped")
        _check_pruner(f"{field}.wrapped", wrapped)
    options = pruner["options"]
    if pruner["name"] == "threshold" and "lower" not in options and "upper" not in options:
        raise InvalidSpec(
            "the threshold pruner needs 'lower', 'upper' or both", field=f"{field}.options"
        )
    if "lower" in options and "upper" in options and options["lower"] > options["upper"]:
        raise InvalidSpec("lower must be <= upper", field=f"{field}.options.lower")


def _check_choice(field: str, chosen: dict[str, Any], known: dict[str, Any]) -> None:
    if chosen["name"] not in known:
        raise InvalidSpec(
            f"unknown {field.split('.')[0]} {chosen['name']!r}; known: {sorted(known)}",
            field=f"{field}.name",
        )


def _check_options(field: str, chosen: dict[str, Any], allowed: dict[str, Hyperparameter]) -> None:
    for option, value in chosen["options"].items():
        where = f"{field}.options.{option}"
        if option not in allowed:
            raise InvalidSpec(
                f"unknown option {option!r} for {chosen['name']!r}; known: {sorted(allowed)}",
                field=where,
            )
        problem = allowed[option].check(value)
        if problem:
            raise InvalidSpec(f"{option} {problem} (got {value!r})", field=where)
