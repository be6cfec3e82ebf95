"""A W&B sweep configuration as a Sweep spec (`sweep import-wandb sweep.yaml`).

What converts:
  method           grid, random, bayes            -> sampler grid, random, tpe
  metric           {name, goal}                   -> objective {metric, direction}
  parameters       value                          -> fixed
                   values (probabilities dropped) -> categorical choices
                   distribution constant, categorical, int_uniform, uniform, q_uniform,
                   log_uniform_values, q_log_uniform_values, log_uniform (min/max are
                   natural logs), or min/max alone (int or float by their type)
                                                  -> float or int, with log and step
  early_terminate  hyperband (min_iter, max_iter, eta)
                                                  -> the hyperband pruner
  run_cap                                         -> budget.n_trials
  program/command                                 -> a program name: programs are
                                                     registered on workers, never in a spec

What does not (normal, q_normal, log_normal, q_log_normal, beta, inv_log_uniform*, nested
parameters, probabilities, s and strict of hyperband, W&B's "bayes" Gaussian process itself) is
named in `Converted.notes`: the spec is what can be run, the notes what it leaves out.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METHODS = {"grid": "grid", "random": "random", "bayes": "tpe"}
DEFAULT_TRIALS = 30  # a W&B sweep without run_cap runs until stopped; a spec needs a budget


@dataclass
class Converted:
    spec: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # what could not be converted, and why


def convert(config: dict[str, Any], *, program: str | None = None) -> Converted:
    """The Sweep spec of a W&B sweep configuration. `program` names the program the workers
    run (default: the stem of the config's `program`, e.g. train for train.py)."""
    notes: list[str] = []
    name = program or _program_name(config, notes)
    spec: dict[str, Any] = {"name": str(config.get("name") or f"{name}-sweep"), "program": name}
    method = config.get("method", "random")
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is none of {sorted(METHODS)}")
    spec["sampler"] = {"name": METHODS[method]}
    if method == "bayes":
        notes.append("method: bayes runs Optuna's TPE sampler, not W&B's Gaussian process")
    metric = config.get("metric")
    if not isinstance(metric, dict) or "name" not in metric:
        raise ValueError("metric: a W&B sweep names its metric {name, goal}")
    goal = metric.get("goal", "minimize")
    if goal not in ("minimize", "maximize"):
        raise ValueError(f"metric.goal: {goal!r} is neither minimize nor maximize")
    spec["objective"] = {"metric": metric["name"], "direction": goal}
    space, fixed = _parameters(config.get("parameters"), notes)
    spec["search_space"], spec["fixed"] = space, fixed
    if not space:
        raise ValueError("parameters: nothing to search (every parameter is a fixed value)")
    spec["pruner"] = _pruner(config.get("early_terminate"), notes)
    spec["budget"] = {"n_trials": int(config.get("run_cap") or DEFAULT_TRIALS)}
    if "run_cap" not in config:
        notes.append(f"run_cap: none given; the budget is {DEFAULT_TRIALS} trials")
    if method == "grid":
        spec["budget"]["n_trials"] = min(spec["budget"]["n_trials"], _grid_size(space))
    return Converted(spec, notes)


def load(path: str | Path, *, program: str | None = None) -> Converted:
    """A W&B sweep YAML (or JSON) file, converted."""
    import yaml

    config = yaml.safe_load(Path(path).read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a mapping")
    return convert(config, program=program)


def _program_name(config: dict[str, Any], notes: list[str]) -> str:
    command = config.get("command")
    source = config.get("program")
    if source is None and not command:
        raise ValueError("program: the config names no program (or pass --program NAME)")
    stem = Path(str(source)).stem if source else "program"
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", stem)[:64] or "program"
    words = [str(w) for w in command] if command else ["${interpreter}", "${program}", "${args}"]
    macros = {"${env}": "", "${interpreter}": "python", "${program}": str(source or "")}
    macros |= {"${args}": "{args}", "${args_no_hyphens}": "{args}", "${args_json}": "{args}"}
    how = " ".join(w for w in (macros.get(w, w) for w in words) if w)
    notes.append(
        f"program: a spec names a program the workers run; register it on each: "
        f"sweep worker --program {name}='{how}'"
    )
    return name


def _parameters(
    parameters: Any, notes: list[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    if not isinstance(parameters, dict) or not parameters:
        raise ValueError("parameters: a W&B sweep needs its parameters")
    space: dict[str, dict[str, Any]] = {}
    fixed: dict[str, Any] = {}
    for name, p in parameters.items():
        where = f"parameters.{name}"
        if not isinstance(p, dict):
            raise ValueError(f"{where}: a mapping (value, values, or a distribution) is needed")
        if "parameters" in p:
            notes.append(f"{where}: nested parameters are not converted; left out")
            continue
        if "probabilities" in p:
            notes.append(f"{where}: probabilities dropped; the sampler picks among the values")
        converted = _parameter(where, p, notes)
        if converted is None:
            continue
        if "value" in converted:
            fixed[name] = converted["value"]
        else:
            space[name] = converted
    return space, fixed


def _parameter(where: str, p: dict[str, Any], notes: list[str]) -> dict[str, Any] | None:
    distribution = p.get("distribution")
    if "value" in p or distribution == "constant":
        return {"value": p["value"]}
    if "values" in p or distribution == "categorical":
        values = list(p.get("values") or [])
        if not values:
            raise ValueError(f"{where}.values: at least one value is needed")
        return {"type": "categorical", "choices": values}
    if distribution is None:  # min and max alone: their type says which
        if "min" not in p or "max" not in p:
            raise ValueError(f"{where}: value, values, or min and max are needed")
        both_int = all(isinstance(p[k], int) and not isinstance(p[k], bool) for k in ("min", "max"))
        distribution = "int_uniform" if both_int else "uniform"
    low, high = p.get("min"), p.get("max")
    if distribution in ("normal", "q_normal", "log_normal", "q_log_normal", "beta") or (
        str(distribution).startswith("inv_log_uniform")
    ):
        notes.append(f"{where}: the {distribution} distribution has no Optuna equivalent; left out")
        return None
    if low is None or high is None:
        raise ValueError(f"{where}: the {distribution} distribution needs min and max")
    if distribution == "int_uniform":
        return {"type": "int", "low": int(low), "high": int(high)}
    if distribution == "uniform":
        return {"type": "float", "low": float(low), "high": float(high)}
    if distribution == "q_uniform":
        q = p.get("q", 1.0)
        if all(isinstance(v, int) for v in (low, high, q)):
            return {"type": "int", "low": low, "high": high, "step": q}
        return {"type": "float", "low": float(low), "high": float(high), "step": float(q)}
    if distribution in ("log_uniform_values", "q_log_uniform_values"):
        if distribution.startswith("q_"):
            notes.append(f"{where}: q dropped (Optuna samples a log scale without steps)")
        return {"type": "float", "low": float(low), "high": float(high), "log": True}
    if distribution == "log_uniform":  # min and max are natural logarithms
        return {"type": "float", "low": math.exp(low), "high": math.exp(high), "log": True}
    raise ValueError(f"{where}.distribution: {distribution!r} is not a W&B distribution")


def _pruner(early: Any, notes: list[str]) -> dict[str, Any]:
    if not early:
        return {"name": "none"}
    if not isinstance(early, dict) or early.get("type") != "hyperband":
        notes.append(f"early_terminate: {early!r} is not hyperband; no pruner")
        return {"name": "none"}
    options: dict[str, Any] = {}
    if "min_iter" in early:
        options["min_resource"] = int(early["min_iter"])
    if "max_iter" in early:
        options["max_resource"] = int(early["max_iter"])
    if "eta" in early:
        options["reduction_factor"] = int(early["eta"])
    left = sorted(set(early) - {"type", "min_iter", "max_iter", "eta"})
    if left:
        notes.append(f"early_terminate: {', '.join(left)} not converted (Optuna's Hyperband)")
    return {"name": "hyperband", "options": options}


def _grid_size(space: dict[str, dict[str, Any]]) -> int:
    """How many configurations a grid holds (its budget), where it is finite."""
    size = 1
    for name, p in space.items():
        if p["type"] == "categorical":
            size *= len(p["choices"])
        elif p["type"] == "int":
            size *= (p["high"] - p["low"]) // p.get("step", 1) + 1
        elif "step" in p:
            size *= round((p["high"] - p["low"]) / p["step"]) + 1
        else:
            raise ValueError(
                f"parameters.{name}: a grid needs values or a step (q_uniform), not a range"
            )
    return size
