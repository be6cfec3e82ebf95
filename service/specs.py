"""What a spec means: its model, dataset, metric and hyperparameters must exist and fit together.

Shape errors die in the schemas; this module checks the catalog and raises InvalidSpec naming
the field, before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sweep.models import catalog
from sweep.service import search
from sweep.service.errors import InvalidSpec
from sweep.service.schemas import (
    CategoricalParam,
    Condition,
    ExperimentCreate,
    FloatParam,
    IntParam,
    Objective,
    WarmStartTrial,
)

# What the objectives' metric names and the parameters' values are checked against: a
# problem's description, or None (for a model: the catalog; for a program: nothing).
MetricCheck = Callable[[str], str | None]
ValueCheck = Callable[[str, object, str], None]


@dataclass(frozen=True)
class Uploaded:
    """A dataset uploaded to the experiment's project, as the spec sees it."""

    info: catalog.DatasetInfo
    fields: dict[str, Any]  # stored in the spec's dataset: what workers fetch it by


def normalize(spec: ExperimentCreate, uploaded: Uploaded | None = None) -> dict[str, Any]:
    """The spec as stored: validated against the catalog (or the uploaded dataset it names),
    or for a program, on its own terms; every default spelled out."""
    if spec.program is not None:
        return _normalize_program(spec)
    model, dataset = _model_and_dataset(spec, uploaded)
    _check_dataset_options(dataset, spec.dataset.options if spec.dataset else {})
    metrics = catalog.objective_metrics(dataset.task)

    def check_metric(metric: str) -> str | None:
        if metric in metrics:
            return None
        return (
            f"dataset {dataset.name!r} ({dataset.task}) does not report {metric!r}; "
            f"it reports {list(metrics)}"
        )

    def check_value(name: str, value: object, field: str) -> None:
        _check_value(model, name, value, field)

    objectives = _objectives(spec, check_metric)
    for name, param in spec.search_space.items():
        _check_param(model, name, param)
    _check_space(spec, check_value)
    normalized = spec.model_dump(mode="json", exclude={"warm_start", "program"})
    if uploaded is not None:
        normalized["dataset"] |= uploaded.fields
    return _finish(normalized, spec, objectives)


def _normalize_program(spec: ExperimentCreate) -> dict[str, Any]:
    """A program's spec: its parameters are its own (any names; types, bounds and conditions
    checked as for a model), its objective any metric it reports."""
    for field in ("model", "dataset"):
        if getattr(spec, field) is not None:
            raise InvalidSpec(
                f"a spec names a program or a model and dataset, not both: "
                f"program {spec.program!r} brings its own {field}",
                field=field,
            )
    objectives = _objectives(spec, lambda metric: None)
    _check_space(spec, lambda name, value, field: None)
    normalized = spec.model_dump(mode="json", exclude={"warm_start", "model", "dataset"})
    return _finish(normalized, spec, objectives)


def _model_and_dataset(
    spec: ExperimentCreate, uploaded: Uploaded | None
) -> tuple[catalog.ModelInfo, catalog.DatasetInfo]:
    if spec.model is None:
        raise InvalidSpec("name a program, or a model and a dataset", field="program")
    model = _known("model", spec.model, catalog.models())
    if spec.dataset is None:
        raise InvalidSpec(f"model {spec.model!r} needs a dataset to train on", field="dataset")
    if uploaded is not None:
        dataset = uploaded.info
    elif spec.dataset.name in catalog.datasets():
        dataset = catalog.datasets()[spec.dataset.name]
    else:
        raise InvalidSpec(
            f"unknown dataset {spec.dataset.name!r}: neither bundled {sorted(catalog.datasets())} "
            f"nor uploaded to the project (PUT /api/v1/datasets/{spec.dataset.name})",
            field="dataset.name",
        )
    if model.inputs == "image" and not dataset.image:
        raise InvalidSpec(
            f"model {model.name!r} needs image data; dataset {dataset.name!r} is not",
            field="dataset.name",
        )
    return model, dataset


def _check_space(spec: ExperimentCreate, check_value: ValueCheck) -> None:
    """Conditions name earlier parameters; fixed values are not searched too."""
    for name, param in spec.search_space.items():
        if param.when is not None:
            _check_condition(spec, name, param.when, check_value)
    for name, value in spec.fixed.items():
        if name in spec.search_space:
            raise InvalidSpec(f"{name!r} is both fixed and searched", field=f"fixed.{name}")
        check_value(name, value, f"fixed.{name}")


def _finish(
    normalized: dict[str, Any], spec: ExperimentCreate, objectives: list[Objective]
) -> dict[str, Any]:
    # Both spelled out: "objective" is the first, which picks the epoch and drives pruning.
    normalized["objectives"] = [o.model_dump(mode="json") for o in objectives]
    normalized["objective"] = normalized["objectives"][0]
    if spec.pruner is None:
        normalized["pruner"] = search.default_pruner(len(objectives))
    search.check_spec(normalized, len(objectives))
    check_warm_start(normalized, spec.warm_start)
    return normalized


def objectives(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """A stored spec's objectives (specs stored before there could be several have one)."""
    return list(spec.get("objectives") or [spec["objective"]])


def _objectives(spec: ExperimentCreate, check_metric: MetricCheck) -> list[Objective]:
    if spec.objective is not None and spec.objectives is not None:
        raise InvalidSpec("give objective or objectives, not both", field="objectives")
    if spec.objective is None and spec.objectives is None:
        raise InvalidSpec("an objective is required", field="objective")
    chosen = [spec.objective] if spec.objective is not None else spec.objectives or []
    where = "objective" if spec.objective is not None else "objectives"
    for i, objective in enumerate(chosen):
        field = f"{where}.metric" if where == "objective" else f"objectives[{i}].metric"
        problem = check_metric(objective.metric)
        if problem:
            raise InvalidSpec(problem, field=field)
        if objective.metric in [o.metric for o in chosen[:i]]:
            raise InvalidSpec(f"{objective.metric!r} is an objective twice", field=field)
    return chosen


def check_warm_start(spec: dict[str, Any], trials: list[WarmStartTrial]) -> None:
    """Warm-start trials hold params the space holds, and a value per objective."""
    if trials and spec["sampler"]["name"] == "grid":
        message = "the grid sampler cannot start warm: it runs its own points"
        raise InvalidSpec(message, field="warm_start")
    n = len(objectives(spec))
    for i, trial in enumerate(trials):
        if len(trial.values) != n:
            message = f"{len(trial.values)} value(s) for {n} objective(s)"
            raise InvalidSpec(message, field=f"warm_start[{i}].values")
        try:
            check_enqueued({**spec, "sampler": {"name": "warm start"}}, trial.params)
        except InvalidSpec as exc:
            raise InvalidSpec(exc.message, field=f"warm_start[{i}].{exc.field}") from exc


def check_enqueued(spec: dict[str, Any], params: dict[str, Any]) -> None:
    """Params given for an enqueued trial are searched ones, with values the space holds,
    and each exists given the others (a conditional one comes with its parent)."""
    space = spec["search_space"]
    for name, value in params.items():
        field = f"params.{name}"
        if name not in space:
            raise InvalidSpec(f"{name!r} is not searched; searched: {list(space)}", field=field)
        problem = search.value_problem(space[name], value)
        if problem:
            raise InvalidSpec(f"{name} {problem} (got {value!r})", field=field)
    given: dict[str, Any] = {}
    for name, p in space.items():
        if name not in params:
            continue
        if not search.is_active(p, given):
            raise InvalidSpec(
                f"{name!r} exists only when its condition on {p['when']['param']!r} holds; "
                f"give {p['when']['param']!r} a value for which it does",
                field=f"params.{name}",
            )
        given[name] = params[name]
    if spec["sampler"]["name"] == "grid" and set(params) != set(space):
        raise InvalidSpec(
            f"the grid sampler runs whole grid points: give every parameter {list(space)}",
            field="params",
        )


def _known(field: str, name: str, known: dict[str, Any]) -> Any:
    if name not in known:
        raise InvalidSpec(
            f"unknown {field.split('.')[0]} {name!r}; known: {sorted(known)}", field=field
        )
    return known[name]


def _check_dataset_options(dataset: catalog.DatasetInfo, options: dict[str, float]) -> None:
    for key, value in options.items():
        field = f"dataset.options.{key}"
        option = dataset.options.get(key)
        if option is None:
            known = sorted(dataset.options) or "none"
            raise InvalidSpec(
                f"unknown option {key!r} for {dataset.name!r}; known: {known}", field=field
            )
        if option.kind == "int" and not catalog.is_integral(value):
            raise InvalidSpec(f"{key} must be an integer", field=field)
        if not option.low <= value <= option.high:
            raise InvalidSpec(f"{key} must be within [{option.low}, {option.high}]", field=field)
    resolved = {key: options.get(key, opt.default) for key, opt in dataset.options.items()}
    if "n_informative" in resolved and resolved["n_informative"] > resolved["n_features"]:
        raise InvalidSpec(
            "n_informative must be <= n_features", field="dataset.options.n_informative"
        )


def _hyperparameter(model: catalog.ModelInfo, name: str, field: str) -> catalog.Hyperparameter:
    hp = model.hyperparameters.get(name)
    if hp is None:
        raise InvalidSpec(
            f"model {model.name!r} has no hyperparameter {name!r}; "
            f"known: {sorted(model.hyperparameters)}",
            field=field,
        )
    return hp


def _check_param(
    model: catalog.ModelInfo, name: str, param: FloatParam | IntParam | CategoricalParam
) -> None:
    field = f"search_space.{name}"
    hp = _hyperparameter(model, name, field)
    if isinstance(param, CategoricalParam):
        for i, choice in enumerate(param.choices):
            _check_value(model, name, choice, f"{field}.choices[{i}]")
        return
    if hp.kind in ("choice", "bool"):
        raise InvalidSpec(f"{name!r} takes {hp.kind} values: use type categorical", field=field)
    if hp.kind == "int" and isinstance(param, FloatParam):
        raise InvalidSpec(f"{name!r} is an integer: use type int", field=f"{field}.type")
    _check_value(model, name, param.low, f"{field}.low")
    _check_value(model, name, param.high, f"{field}.high")


def _check_value(model: catalog.ModelInfo, name: str, value: object, field: str) -> None:
    problem = _hyperparameter(model, name, field).check(value)
    if problem:
        raise InvalidSpec(f"{name} {problem} (got {value!r})", field=field)


def _check_condition(
    spec: ExperimentCreate, name: str, when: Condition, check_value: ValueCheck
) -> None:
    """A condition names an earlier parameter and values that parameter can take."""
    field = f"search_space.{name}.when"
    earlier = list(spec.search_space)[: list(spec.search_space).index(name)]
    if when.param not in earlier:
        raise InvalidSpec(
            f"{name!r} depends on {when.param!r}, which must be searched before it",
            field=f"{field}.param",
        )
    bounds = {"gte": when.gte, "gt": when.gt, "lte": when.lte, "lt": when.lt}
    if when.in_ is None and all(v is None for v in bounds.values()):
        raise InvalidSpec("a condition needs 'in' or a bound (gte, gt, lte, lt)", field=field)
    parent = spec.search_space[when.param]
    for i, value in enumerate(when.in_ or ()):
        check_value(when.param, value, f"{field}.in[{i}]")
        if isinstance(parent, CategoricalParam) and not any(
            type(c) is type(value) and c == value for c in parent.choices
        ):
            raise InvalidSpec(
                f"{value!r} is not among {when.param!r}'s choices {parent.choices}",
                field=f"{field}.in[{i}]",
            )
    if isinstance(parent, CategoricalParam) and any(
        not isinstance(choice, int | float) or isinstance(choice, bool) for choice in parent.choices
    ):
        for key, bound in bounds.items():
            if bound is not None:
                raise InvalidSpec(
                    f"{when.param!r} has non-numeric choices: compare it with 'in'",
                    field=f"{field}.{key}",
                )
