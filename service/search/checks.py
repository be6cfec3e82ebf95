"""Whether a spec's sampler, pruner and search space can work together, told to the user
with the field at fault before anything is stored."""

from __future__ import annotations

import importlib.util
from typing import Any

import optuna

from sweep.models.plugins import Hyperparameter
from sweep.service.errors import InvalidSpec
from sweep.service.search.optimizer import directions, suggest_all
from sweep.service.search.pruners import PRUNERS, make_pruner
from sweep.service.search.samplers import SAMPLERS, SamplerKind, make_sampler
from sweep.service.search.space import (
    MAX_FINITE,
    distribution,
    distributions,
    finite_values,
    space_size,
)


def check_spec(spec: dict[str, Any], n_objectives: int = 1) -> None:
    """Raise InvalidSpec unless the spec's sampler, pruner and search space are usable."""
    _check_toolbox(spec, n_objectives)
    try:  # one real ask on a scratch study: what fails here would fail every claim
        study = optuna.create_study(
            sampler=make_sampler(spec),
            pruner=make_pruner(spec["pruner"]),
            directions=directions(spec),
        )
        suggest_all(study.ask(), distributions(spec["search_space"]), spec)
    except Exception as exc:
        raise InvalidSpec(
            f"the sampler cannot work with this spec: {exc}", field="sampler"
        ) from exc


def _check_toolbox(spec: dict[str, Any], n_objectives: int) -> None:
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
    _check_choice(field, pruner, PRUNERS)
    kind = PRUNERS[pruner["name"]]
    _check_options(field, pruner, kind.options)
    options = pruner["options"]
    for option in kind.required:
        if option not in options:
            raise InvalidSpec(
                f"pruner {pruner['name']!r} needs option {option!r}",
                field=f"{field}.options.{option}",
            )
    if kind.one_of and not any(option in options for option in kind.one_of):
        wanted = ", ".join(repr(o) for o in kind.one_of)
        raise InvalidSpec(
            f"the {pruner['name']} pruner needs {wanted} or both", field=f"{field}.options"
        )
    wrapped = pruner.get("wrapped")
    if wrapped is not None:
        if not kind.wraps:
            raise InvalidSpec("only the patient pruner wraps another", field=f"{field}.wrapped")
        _check_pruner(f"{field}.wrapped", wrapped)
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
