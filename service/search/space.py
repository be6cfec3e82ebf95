"""What a search space means: Optuna distributions, conditions, finite sizes, the
configurations of a finite space and when two are the same; and the Pareto front."""

from __future__ import annotations

import itertools
import math
import operator
import random
from collections.abc import Iterator
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

MAX_FINITE = 100_000  # finite spaces larger than this are treated as unbounded


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
