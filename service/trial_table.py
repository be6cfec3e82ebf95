"""The trials table as the API pages it: which trials (state, parameter filters), in what order
(number, objective, a parameter, or a metric's last reported value), and each trial's last
reported metrics beside it. Everything is done in SQL, so a page costs the same at 10,000
trials as at 10.

Filters are `NAME>=X`, `NAME<=X` (numeric parameters) and `NAME=X` (any parameter; X as the
spec writes the value: `optimizer=adam`, `batch_size=64`, `batch_norm=true`). Sorts are
`number`, `objective`, `param:NAME` and `metric:NAME`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from typing import cast as typed

from sqlalchemy import Select, Text, and_, cast, select
from sqlalchemy.orm import Session

from sweep.service.errors import InvalidSpec, NotFound
from sweep.service.schemas import Curve, CurveSet, trial_name
from sweep.service.tables import Experiment, Trial, TrialMetric

_FILTER = re.compile(r"^(?P<name>[^<>=]+?)\s*(?P<op>>=|<=|=)\s*(?P<value>.+)$")
NUMERIC = ("float", "int")
Op = Literal[">=", "<=", "="]


@dataclass(frozen=True)
class Filter:
    param: str
    op: Op
    value: Any
    numeric: bool  # compared as a number; else as the JSON text of a choice


def parse_filters(experiment: Experiment, where: Sequence[str]) -> list[Filter]:
    """`where` entries checked against the search space; 422 naming `where` when one is wrong."""
    space: dict[str, Any] = experiment.spec["search_space"]
    filters = []
    for text in where:
        match = _FILTER.match(text.strip())
        if match is None:
            raise InvalidSpec(f"{text!r} is not NAME>=X, NAME<=X or NAME=X", field="where")
        name, op, raw = match["name"].strip(), match["op"], match["value"].strip()
        if name not in space:
            known = ", ".join(space) or "none"
            raise InvalidSpec(
                f"no parameter {name!r} in the search space (it has: {known})", field="where"
            )
        numeric = space[name]["type"] in NUMERIC
        if op != "=" and not numeric:
            raise InvalidSpec(f"{name} is categorical: filter it with {name}=VALUE", field="where")
        value = _value(name, raw, space[name], numeric)
        filters.append(Filter(name, typed(Op, op), value, numeric))
    return filters


def _value(name: str, raw: str, param: dict[str, Any], numeric: bool) -> Any:
    if numeric:
        try:
            number = float(raw)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise InvalidSpec(f"{name}: {raw!r} is not a finite number", field="where")
        return number
    for choice in param["choices"]:  # the choice whose spelling the filter gives
        if raw == (json.dumps(choice) if not isinstance(choice, str) else choice):
            return choice
    choices = ", ".join(c if isinstance(c, str) else json.dumps(c) for c in param["choices"])
    raise InvalidSpec(f"{name}: {raw!r} is not one of its choices ({choices})", field="where")


def apply_filters(query: Select[Any], filters: list[Filter]) -> Select[Any]:
    for f in filters:
        if f.op == "=" and not f.numeric:
            # Both databases give a JSON value's text the way json.dumps writes it.
            query = query.where(cast(Trial.params[f.param], Text) == json.dumps(f.value))
        elif f.op == "=":
            query = query.where(Trial.params[f.param].as_float() == f.value)
        elif f.op == ">=":
            query = query.where(Trial.params[f.param].as_float() >= f.value)
        else:
            query = query.where(Trial.params[f.param].as_float() <= f.value)
    return query


def sort_key(experiment: Experiment, sort: str) -> tuple[str, str | None]:
    """("number" | "objective" | "param" | "metric", name); 422 naming `sort` otherwise."""
    if sort in ("number", "objective"):
        return sort, None
    kind, _, name = sort.partition(":")
    if kind == "param" and name in experiment.spec["search_space"]:
        return kind, name
    if kind == "metric" and name:
        return kind, name
    raise InvalidSpec(
        f"sort {sort!r}: use number, objective, param:NAME (a searched parameter) or metric:NAME",
        field="sort",
    )


def order_by(
    query: Select[Any], experiment: Experiment, sort: str, order: Literal["asc", "desc"] | None
) -> Select[Any]:
    kind, name = sort_key(experiment, sort)
    column: Any
    if kind == "number":
        column = Trial.number
    elif kind == "objective":
        column = Trial.value
        if order is None:  # best first
            order = "desc" if experiment.direction == "maximize" else "asc"
    elif kind == "param":
        assert name is not None
        numeric = experiment.spec["search_space"][name]["type"] in NUMERIC
        param = Trial.params[name]
        column = param.as_float() if numeric else cast(param, Text)
    else:
        assert name is not None
        last = (
            select(TrialMetric.values[name].as_float())
            .where(TrialMetric.trial_id == Trial.id, TrialMetric.epoch == Trial.last_epoch)
            .scalar_subquery()
        )
        column = last
    ordered = column.desc() if order == "desc" else column.asc()
    return query.order_by(ordered.nulls_last(), Trial.number.nulls_last(), Trial.id)


def last_metrics(session: Session, trials: Sequence[Trial]) -> dict[int, dict[str, Any]]:
    """Each trial's last reported epoch's metrics, by trial id (one query for the page)."""
    ids = [t.id for t in trials if t.last_epoch > 0]
    if not ids:
        return {}
    rows = session.execute(
        select(TrialMetric.trial_id, TrialMetric.values)
        .join(Trial, and_(Trial.id == TrialMetric.trial_id, Trial.last_epoch == TrialMetric.epoch))
        .where(Trial.id.in_(ids))
    ).all()
    return {trial_id: values for trial_id, values in rows}


def curves(
    session: Session, experiment: Experiment, metric: str, numbers: Sequence[int], max_points: int
) -> CurveSet:
    """`metric` per epoch for the trials numbered; 404 naming a number the experiment lacks."""
    wanted = list(dict.fromkeys(numbers))
    found = {
        t.number: t
        for t in session.scalars(
            select(Trial).where(Trial.experiment_id == experiment.id, Trial.number.in_(wanted))
        )
    }
    if missing := [n for n in wanted if n not in found]:
        raise NotFound(f"experiment {experiment.id} has no trial number {missing[0]}")
    points: dict[int, list[tuple[int, Any]]] = {t.id: [] for t in found.values()}
    rows = session.execute(
        select(TrialMetric.trial_id, TrialMetric.epoch, TrialMetric.values[metric].as_float())
        .where(TrialMetric.trial_id.in_(list(points)))
        .order_by(TrialMetric.trial_id, TrialMetric.epoch)
    )
    for trial_id, epoch, value in rows:
        points[trial_id].append((epoch, value))
    out = []
    for number in wanted:
        trial = found[number]
        kept = thin(points[trial.id], max_points)
        out.append(
            Curve(
                trial_id=trial.id,
                name=trial_name(experiment.id, number) or "",
                state=trial.state,
                epochs=[e for e, _ in kept],
                values=[v for _, v in kept],
            )
        )
    return CurveSet(metric=metric, curves=out)


def thin(points: list[Any], most: int) -> list[Any]:
    """At most `most` of the points, evenly spaced, the first and the last kept."""
    if len(points) <= most:
        return points
    step = (len(points) - 1) / (most - 1)
    return [points[round(i * step)] for i in range(most)]
