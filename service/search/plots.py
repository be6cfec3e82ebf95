"""The dashboard's plots: Optuna's own visualization functions over the experiment's trials,
and a timeline of trials per worker from SQL. Each is a plotly figure as JSON, which the page
draws with the plotly.js that the plotly package carries.

A refresh asks for every plot at once, so the trials are read (and a study built from them)
once per change of the experiment, and each figure is kept until the next: an ended
experiment's plots are computed once, a running one's at most every `ttl` seconds. Plots stay
fast at 10,000 trials: the trial plots (parallel coordinates, slice, contour, importance)
draw the best trials and a fixed random sample of the rest, and the learning curves draw the
best trials' curves over a band of every trial's; each figure says what it shows.
"""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sweep.service import specs
from sweep.service.errors import Conflict
from sweep.service.search.optimizer import Optimizer
from sweep.service.states import ENDED_EXPERIMENT_STATES
from sweep.service.tables import Experiment, Trial, Worker, utcnow

if TYPE_CHECKING:
    import plotly.graph_objects as go

PlotKind = Literal[
    "history", "intermediate", "parallel", "importance", "slice", "contour", "pareto", "timeline"
]
PLOTS: tuple[str, ...] = get_args(PlotKind)
# Beyond this many completed trials, the trial plots draw a sample: the best BEST_SHOWN and
# random others (the same ones at every refresh).
MOST_TRIALS = 1000
BEST_SHOWN = 100
MOST_CURVES = 100  # learning curves drawn one by one; beyond, the best and a band


@dataclass
class _Snapshot:
    """An experiment's trials as one refresh sees them, and the figures drawn from them."""

    key: tuple[Any, ...]
    made: float
    trials: list[FrozenTrial]
    figures: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Plots:
    """The plots of each experiment, kept per change (see the module's docstring)."""

    def __init__(self, optimizer: Optimizer, ttl: float = 5.0, max_experiments: int = 8) -> None:
        self.optimizer = optimizer
        self.ttl = ttl
        self.max_experiments = max_experiments
        self._snapshots: OrderedDict[int, _Snapshot] = OrderedDict()
        self._guard = threading.Lock()
        self._building: dict[int, threading.Lock] = {}

    def available(self, session: Session, experiment: Experiment) -> dict[str, str]:
        """The plots that cannot be drawn yet, each with why (the dashboard asks for the
        others)."""
        trials = self._snapshot(session, experiment).trials
        started = _started(session, experiment)
        problems = {kind: _problem(kind, experiment, trials, started) for kind in PLOTS}
        return {kind: problem for kind, problem in problems.items() if problem is not None}

    def figure(self, session: Session, experiment: Experiment, kind: PlotKind) -> str:
        """Plot `kind` of the experiment as plotly JSON; 409 when there is nothing to plot
        yet."""
        snapshot = self._snapshot(session, experiment)
        with snapshot.lock:  # one request draws it; the others wait for its figure
            if kind not in snapshot.figures:
                snapshot.figures[kind] = _draw(session, experiment, kind, snapshot.trials)
            return snapshot.figures[kind]

    def _snapshot(self, session: Session, experiment: Experiment) -> _Snapshot:
        key = (
            experiment.created_at,
            experiment.state,
            experiment.trial_count,
            experiment.finish_seq,
        )
        ended = experiment.state in ENDED_EXPERIMENT_STATES
        with self._guard:
            building = self._building.setdefault(experiment.id, threading.Lock())
        with building:  # concurrent refreshes read the trials once
            with self._guard:
                cached = self._snapshots.get(experiment.id)
            fresh = cached is not None and cached.key == key
            if (
                cached is not None
                and fresh
                and (ended or time.monotonic() - cached.made < self.ttl)
            ):
                return cached
            snapshot = _Snapshot(
                key=key,
                made=time.monotonic(),
                trials=self.optimizer.history(session, experiment),
            )
            with self._guard:
                self._snapshots[experiment.id] = snapshot
                self._snapshots.move_to_end(experiment.id)
                while len(self._snapshots) > self.max_experiments:
                    self._snapshots.popitem(last=False)
            return snapshot

    def forget(self, experiment_id: int) -> None:
        with self._guard:
            self._snapshots.pop(experiment_id, None)


def _draw(session: Session, experiment: Experiment, kind: str, trials: list[FrozenTrial]) -> str:
    if kind == "timeline":
        if problem := _problem(kind, experiment, [], _started(session, experiment)):
            raise Conflict(problem)
        return _timeline(session, experiment).to_json()
    if problem := _problem(kind, experiment, trials, 0):
        raise Conflict(problem)
    objectives = specs.objectives(experiment.spec)
    directions = [o["direction"] for o in objectives]
    # Optuna plots one objective at a time: with several, the first (which picks the epoch).
    target: Callable[[FrozenTrial], float] | None = None
    if len(objectives) > 1:
        target = lambda t: t.values[0]  # noqa: E731
    name = objectives[0]["metric"]
    vis = optuna.visualization
    note = ""
    if kind == "intermediate":
        shown, note = _best_curves(trials, directions[0])
        fig = _mark_pruned(vis.plot_intermediate_values(_study(shown, directions)), shown)
        if len(shown) < len(trials):
            _add_band(fig, trials)
    elif kind == "pareto":
        plotted = objectives[:3]  # plotly draws fronts in 2 or 3 dimensions
        fig = vis.plot_pareto_front(
            _study(trials, directions),
            targets=lambda t: [t.values[i] for i in range(len(plotted))],
            target_names=[o["metric"] for o in plotted],
        )
    elif kind == "history":
        fig = vis.plot_optimization_history(
            _study(trials, directions), target=target, target_name=name
        )
    else:
        sample, note = _sample(trials, directions[0], experiment.id)
        study = _study(sample, directions)
        if kind == "parallel":
            fig = vis.plot_parallel_coordinate(study, target=target, target_name=name)
        elif kind == "importance":
            fig = vis.plot_param_importances(study, target=target, target_name=name)
        elif kind == "slice":
            fig = vis.plot_slice(study, target=target, target_name=name)
        else:
            fig = vis.plot_contour(
                study, params=_top_two(study, target), target=target, target_name=name
            )
    if note:
        fig.update_layout(meta={"note": note})
    return str(fig.to_json())


def _study(trials: list[FrozenTrial], directions: list[str]) -> optuna.Study:
    study = optuna.create_study(directions=[StudyDirection[d.upper()] for d in directions])
    study.add_trials(trials)
    return study


def _ranked(trials: list[FrozenTrial], direction: str) -> list[FrozenTrial]:
    """Completed trials, best first by the (first) objective."""
    completed = [t for t in trials if t.state == OptunaState.COMPLETE and t.values]
    return sorted(completed, key=lambda t: t.values[0], reverse=direction == "maximize")


def _sample(trials: list[FrozenTrial], direction: str, seed: int) -> tuple[list[FrozenTrial], str]:
    """At most MOST_TRIALS completed trials: the best, and others drawn at random (the same
    at every refresh), in trial order; and what that shows, when it is not all of them."""
    ranked = _ranked(trials, direction)
    if len(ranked) <= MOST_TRIALS:
        return trials, ""
    rest = ranked[BEST_SHOWN:]
    drawn = random.Random(seed).sample(rest, MOST_TRIALS - BEST_SHOWN)
    chosen = sorted(ranked[:BEST_SHOWN] + drawn, key=lambda t: t.number)
    return chosen, (
        f"the {BEST_SHOWN} best and {len(drawn):,} others at random "
        f"of {len(ranked):,} completed trials"
    )


def _best_curves(trials: list[FrozenTrial], direction: str) -> tuple[list[FrozenTrial], str]:
    """The trials whose curves are drawn one by one: all, or the MOST_CURVES best."""
    reported = [t for t in trials if t.intermediate_values]
    if len(reported) <= MOST_CURVES:
        return trials, ""
    worst = float("-inf") if direction == "maximize" else float("inf")

    def value(t: FrozenTrial) -> float:
        return t.values[0] if t.values else worst

    ranked = sorted(reported, key=value, reverse=direction == "maximize")[:MOST_CURVES]
    shown = sorted(ranked, key=lambda t: t.number)
    return shown, (
        f"the {MOST_CURVES} best of {len(reported):,} trials' curves; "
        "band: 10th to 90th percentile of all"
    )


def _add_band(fig: go.Figure, trials: list[FrozenTrial]) -> None:
    """Every trial's curves as a band (10th to 90th percentile per epoch) and the median."""
    import plotly.graph_objects as go

    by_step: dict[int, list[float]] = {}
    for t in trials:
        for step, value in t.intermediate_values.items():
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    low, median, high = ([float(np.percentile(by_step[s], q)) for s in steps] for q in (10, 50, 90))
    edge = {"mode": "lines", "line": {"width": 0}}
    traces: list[dict[str, Any]] = [  # the upper edge, the lower one filled up to it, the median
        {**edge, "y": high, "name": "90th percentile", "showlegend": False, "hoverinfo": "skip"},
        {
            **edge,
            "y": low,
            "name": "10th to 90th percentile",
            "fill": "tonexty",
            "fillcolor": "rgba(100,100,100,0.2)",
        },
        {
            "mode": "lines",
            "y": median,
            "name": "median of all",
            "line": {"color": "black", "dash": "dash"},
        },
    ]
    for trace in traces:
        fig.add_trace(go.Scatter(x=steps, **trace))


def _problem(
    kind: str, experiment: Experiment, trials: list[FrozenTrial], started: int
) -> str | None:
    """Why plot `kind` cannot be drawn yet, or None."""
    if kind == "timeline":
        return None if started else "no trial has started yet"
    if kind == "intermediate":
        reported = any(t.intermediate_values for t in trials)
        return None if reported else "no trial has reported an epoch yet"
    if kind == "pareto" and len(specs.objectives(experiment.spec)) == 1:
        return "a Pareto front needs several objectives; this experiment has one"
    if kind == "contour" and len(experiment.spec["search_space"]) < 2:
        return "a contour plot needs two searched parameters"
    need = 2 if kind in ("importance", "contour") else 1
    completed = sum(t.state == OptunaState.COMPLETE for t in trials)
    if completed < need:
        return f"this plot needs {need} completed trial(s); there are {completed}"
    return None


def _started(session: Session, experiment: Experiment) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(Trial)
            .where(Trial.experiment_id == experiment.id, Trial.started_at.is_not(None))
        )
        or 0
    )


def _top_two(study: optuna.Study, target: Callable[[FrozenTrial], float] | None) -> list[str]:
    """The two most important parameters (fANOVA), for the contour plot."""
    try:
        ranked = list(optuna.importance.get_param_importances(study, target=target))
    except (ValueError, RuntimeError) as exc:
        raise Conflict(f"parameter importance cannot be computed: {exc}") from exc
    if len(ranked) < 2:
        raise Conflict("a contour plot needs two searched parameters")
    return ranked[:2]


def _mark_pruned(fig: go.Figure, trials: list[FrozenTrial]) -> go.Figure:
    """Pruned trials' curves dotted and named so, the others solid."""
    pruned = {f"Trial{t.number}" for t in trials if t.state == OptunaState.PRUNED}
    for trace in fig.data:
        if trace.name in pruned:
            trace.update(name=f"{trace.name} (pruned)", line={"dash": "dot"})
    return fig


STATE_COLORS = {
    "completed": "#2ca02c",
    "pruned": "#ff7f0e",
    "running": "#1f77b4",
    "queued": "#7f7f7f",
    "failed": "#d62728",
    "cancelled": "#bcbd22",
}


def _timeline(session: Session, experiment: Experiment) -> go.Figure:
    """One bar per trial, from its latest attempt's start to its end (or now), on the row of
    the worker that ran it, colored by state: the MOST_TRIALS that started last."""
    import plotly.graph_objects as go

    started = Trial.started_at.is_not(None)
    total = _started(session, experiment)
    rows = session.execute(
        select(
            Trial.number, Trial.state, Trial.started_at, Trial.finished_at, Worker.id, Worker.name
        )
        .outerjoin(Worker, Worker.id == Trial.worker_id)
        .where(Trial.experiment_id == experiment.id, started)
        .order_by(Trial.started_at.desc(), Trial.number.desc())
        .limit(MOST_TRIALS)
    ).all()
    now = utcnow()
    by_state: dict[str, list[Any]] = {}
    for number, state, began, finished, worker_id, worker_name in reversed(rows):
        end: datetime = finished or now
        who = f"{worker_name} (#{worker_id})" if worker_id is not None else "no worker"
        by_state.setdefault(state, []).append((number, began, end, who))
    fig = go.Figure()
    for state, bars in by_state.items():
        fig.add_trace(
            go.Bar(
                name=state,
                orientation="h",
                base=[began.isoformat() for _, began, _, _ in bars],
                x=[(end - began).total_seconds() * 1000 for _, began, end, _ in bars],
                y=[who for *_, who in bars],
                customdata=[f"#{number}" for number, *_ in bars],  # hover only: no text drawn
                hovertemplate="trial %{customdata}<br>%{base} + %{x:.0f} ms<extra>"
                + state
                + "</extra>",
                marker_color=STATE_COLORS.get(state),
            )
        )
    fig.update_layout(
        title="Timeline of trials per worker",
        xaxis={"type": "date", "title": "time"},
        yaxis={"title": "worker"},
        barmode="overlay",
    )
    if total > len(rows):
        fig.update_layout(meta={"note": f"the {len(rows):,} trials that started last of {total:,}"})
    return fig
