"""The dashboard's plots: Optuna's own visualization functions over a copy of the experiment's
in-memory study, and a timeline of trials per worker from SQL. Each is a plotly figure as
JSON, which the page draws with the plotly.js that the plotly package carries."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sweep.service import specs
from sweep.service.errors import Conflict
from sweep.service.search.optimizer import Optimizer
from sweep.service.tables import Experiment, Trial, Worker, utcnow

if TYPE_CHECKING:
    import plotly.graph_objects as go

PlotKind = Literal[
    "history", "intermediate", "parallel", "importance", "slice", "contour", "pareto", "timeline"
]
PLOTS: tuple[str, ...] = get_args(PlotKind)


def available(session: Session, optimizer: Optimizer, experiment: Experiment) -> dict[str, str]:
    """The plots that cannot be drawn yet, each with why (the dashboard asks for the others)."""
    trials = optimizer.history(session, experiment)
    started = _started(session, experiment)
    problems = {kind: _problem(kind, experiment, trials, started) for kind in PLOTS}
    return {kind: problem for kind, problem in problems.items() if problem is not None}


def figure(session: Session, optimizer: Optimizer, experiment: Experiment, kind: PlotKind) -> str:
    """Plot `kind` of the experiment as plotly JSON; 409 when there is nothing to plot yet."""
    if kind == "timeline":
        if problem := _problem(kind, experiment, [], _started(session, experiment)):
            raise Conflict(problem)
        return _timeline(session, experiment).to_json()
    trials = optimizer.history(session, experiment)
    if problem := _problem(kind, experiment, trials, 0):
        raise Conflict(problem)
    objectives = specs.objectives(experiment.spec)
    study = optuna.create_study(directions=[o["direction"] for o in objectives])
    study.add_trials(trials)
    # Optuna plots one objective at a time: with several, the first (which picks the epoch).
    target: Callable[[FrozenTrial], float] | None = None
    if len(objectives) > 1:
        target = lambda t: t.values[0]  # noqa: E731
    name = objectives[0]["metric"]
    vis = optuna.visualization
    if kind == "intermediate":
        fig = _mark_pruned(vis.plot_intermediate_values(study), trials)
    elif kind == "pareto":
        shown = objectives[:3]  # plotly draws fronts in 2 or 3 dimensions
        fig = vis.plot_pareto_front(
            study,
            targets=lambda t: [t.values[i] for i in range(len(shown))],
            target_names=[o["metric"] for o in shown],
        )
    elif kind == "history":
        fig = vis.plot_optimization_history(study, target=target, target_name=name)
    elif kind == "parallel":
        fig = vis.plot_parallel_coordinate(study, target=target, target_name=name)
    elif kind == "importance":
        fig = vis.plot_param_importances(study, target=target, target_name=name)
    elif kind == "slice":
        fig = vis.plot_slice(study, target=target, target_name=name)
    else:
        fig = vis.plot_contour(
            study, params=_top_two(study, target), target=target, target_name=name
        )
    return fig.to_json()


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
    the worker that ran it, colored by state."""
    import plotly.graph_objects as go

    rows = session.execute(
        select(
            Trial.number, Trial.state, Trial.started_at, Trial.finished_at, Worker.id, Worker.name
        )
        .outerjoin(Worker, Worker.id == Trial.worker_id)
        .where(Trial.experiment_id == experiment.id, Trial.started_at.is_not(None))
        .order_by(Trial.number)
    ).all()
    now = utcnow()
    by_state: dict[str, list[Any]] = {}
    for number, state, started, finished, worker_id, worker_name in rows:
        end: datetime = finished or now
        who = f"{worker_name} (#{worker_id})" if worker_id is not None else "no worker"
        by_state.setdefault(state, []).append((number, started, end, who))
    fig = go.Figure()
    for state, bars in by_state.items():
        fig.add_trace(
            go.Bar(
                name=state,
                orientation="h",
                base=[started.isoformat() for _, started, _, _ in bars],
                x=[(end - started).total_seconds() * 1000 for _, started, end, _ in bars],
                y=[who for *_, who in bars],
                text=[f"#{number}" for number, *_ in bars],
                hovertemplate="trial %{text}<br>%{base} + %{x:.0f} ms<extra>" + state + "</extra>",
                marker_color=STATE_COLORS.get(state),
            )
        )
    fig.update_layout(
        title="Timeline of trials per worker",
        xaxis={"type": "date", "title": "time"},
        yaxis={"title": "worker"},
        barmode="overlay",
    )
    return fig
