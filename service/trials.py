"""Trials: creating them (from the sampler's suggestions, enqueued params, a warm start) and
reading them (pages, the best, details, weights). What happens to a running attempt is in
sweep.service.attempts; how trials end, in sweep.service.lifecycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sweep.models import catalog
from sweep.service import artifacts, lifecycle, rows, search, specs, trial_table
from sweep.service.db import notify_on_commit
from sweep.service.errors import Conflict, NotFound
from sweep.service.schemas import (
    BestTrials,
    MetricRead,
    TrialDetail,
    TrialPage,
    TrialRead,
    WarmStartTrial,
)
from sweep.service.search import Suggestion
from sweep.service.states import ENDED_EXPERIMENT_STATES, TrialState
from sweep.service.tables import Artifact, Experiment, Trial, TrialMetric

# The system attr of trials that came in finished (warm start), not run here.
IMPORTED = "sweep:imported"


def config(spec: dict[str, Any], trial: Trial) -> dict[str, Any]:
    """Every hyperparameter the trial trains with: params, the spec's fixed values, defaults
    (a program's: its params and the fixed values, as they are)."""
    if spec.get("program") is not None:
        return {**spec["fixed"], **trial.params}
    return catalog.resolve_hyperparameters(spec["model"], {**spec["fixed"], **trial.params})


# --- creation ------------------------------------------------------------------------------


def create(session: Session, experiment: Experiment, suggestion: Suggestion) -> Trial:
    """The experiment's next trial, running its first attempt with the sampler's params (the
    caller holds the experiment's row lock)."""
    trial = Trial(
        experiment_id=experiment.id,
        number=experiment.trial_count,
        state=TrialState.RUNNING,
        params=suggestion.params,
        system_attrs=suggestion.system_attrs,
        attempt=1,
        retries=0,
        last_epoch=0,
        has_weights=False,
    )
    experiment.trial_count += 1
    session.add(trial)
    return trial


def planned(session: Session, experiment: Experiment) -> int:
    """Trials created plus enqueued ones still waiting for their first start."""
    waiting = session.scalar(
        select(func.count()).where(
            Trial.experiment_id == experiment.id,
            Trial.number.is_(None),
            Trial.state == TrialState.QUEUED,
        )
    )
    return experiment.trial_count + (waiting or 0)


def warm_start(session: Session, experiment: Experiment, given: list[WarmStartTrial]) -> None:
    """A new experiment's first trials, finished elsewhere (validated with its spec): the
    sampler starts from them. They have no curves, weights or worker, and n_trials grows by
    their count, so the budget still buys as many new trials."""
    experiment.n_trials += len(given)
    for number, finished in enumerate(given):
        trial = Trial(
            experiment_id=experiment.id,
            number=number,
            state=TrialState.RUNNING,
            params=finished.params,
            system_attrs={IMPORTED: True},
            attempt=0,
            retries=0,
            last_epoch=0,
            has_weights=False,
        )
        session.add(trial)
        session.flush()
        state = TrialState.COMPLETED if finished.state == "completed" else TrialState.PRUNED
        lifecycle.finish(session, trial, state, value=finished.values[0], values=finished.values)
    experiment.trial_count = len(given)


def enqueue(session: Session, experiment_id: int, params: dict[str, Any]) -> TrialRead:
    """Queue a trial with the given params; it runs before the sampler's next suggestion and
    counts toward n_trials. It gets its number when it first starts."""
    experiment = rows.lock_experiment(session, experiment_id)
    if experiment.state in ENDED_EXPERIMENT_STATES:
        raise Conflict(f"experiment {experiment_id} is {experiment.state}")
    specs.check_enqueued(experiment.spec, params)
    taken = planned(session, experiment)
    if taken >= experiment.n_trials:
        raise Conflict(
            f"the budget of {experiment.n_trials} trials is taken ({taken} created or "
            f"queued); raise budget.n_trials with PATCH first"
        )
    if search.run_once_size(experiment.spec) is not None and _repeats(session, experiment, params):
        raise Conflict("a trial with these params exists already, and repeats are not allowed")
    trial = Trial(
        experiment_id=experiment_id,
        number=None,
        state=TrialState.QUEUED,
        params=params,
        system_attrs={},
        attempt=0,
        retries=0,
        last_epoch=0,
        has_weights=False,
    )
    session.add(trial)
    session.flush()
    notify_on_commit(session)
    return read(trial)


def _repeats(session: Session, experiment: Experiment, params: dict[str, Any]) -> bool:
    key = search.config_key(params)
    existing = session.scalars(select(Trial.params).where(Trial.experiment_id == experiment.id))
    return any(search.config_key(p) == key for p in existing)


# --- queries -------------------------------------------------------------------------------


def read(trial: Trial, last_metrics: dict[str, Any] | None = None) -> TrialRead:
    out = TrialRead.model_validate(trial, from_attributes=True)
    if last_metrics is not None:
        out.last_metrics = last_metrics
    return out


def detail(session: Session, trial: Trial) -> TrialDetail:
    experiment = rows.experiment(session, trial.experiment_id)
    metrics = session.scalars(
        select(TrialMetric).where(TrialMetric.trial_id == trial.id).order_by(TrialMetric.epoch)
    ).all()
    return TrialDetail(
        **read(trial).model_dump(),
        config=config(experiment.spec, trial),
        metrics=[MetricRead.model_validate(m, from_attributes=True) for m in metrics],
        output=trial.output,
    )


def by_number(session: Session, experiment: Experiment, number: int) -> TrialDetail:
    """The trial a user names EXPERIMENT/NUMBER."""
    trial = session.scalars(
        select(Trial).where(Trial.experiment_id == experiment.id, Trial.number == number)
    ).first()
    if trial is None:
        raise NotFound(f"experiment {experiment.id} has no trial number {number}")
    return detail(session, trial)


def page(
    session: Session,
    *,
    experiment: Experiment,
    state: TrialState | None,
    sort: str,
    order: Literal["asc", "desc"] | None,
    limit: int,
    offset: int,
    where: Sequence[str] = (),
) -> TrialPage:
    """A page of the experiment's trials (sorts and filters: sweep.service.trial_table), each
    with its last reported metrics."""
    filters = trial_table.parse_filters(experiment, where)
    query = select(Trial).where(Trial.experiment_id == experiment.id)
    if state is not None:
        query = query.where(Trial.state == state)
    query = trial_table.apply_filters(query, filters)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    query = trial_table.order_by(query, experiment, sort, order)
    items = session.scalars(query.limit(limit).offset(offset)).all()
    last = trial_table.last_metrics(session, items)
    return TrialPage(
        items=[read(t, last.get(t.id, {})) for t in items], total=total, limit=limit, offset=offset
    )


def best(session: Session, *, experiment: Experiment, k: int) -> BestTrials:
    """The k completed trials with the best objective values, best first; with several
    objectives, the whole Pareto front (best first by the first objective)."""
    wanted = specs.objectives(experiment.spec)
    if len(wanted) > 1:
        completed = session.scalars(
            select(Trial).where(
                Trial.experiment_id == experiment.id,
                Trial.state == TrialState.COMPLETED,
                Trial.values.is_not(None),
            )
        ).all()
        directions = [o["direction"] for o in wanted]
        front = search.pareto_front([t.values or [] for t in completed], directions)
        ranked = sorted(
            (completed[i] for i in front),
            key=lambda t: (-(t.value or 0.0) if directions[0] == "maximize" else t.value, t.id),
        )
        last = trial_table.last_metrics(session, ranked)
        return BestTrials(
            metric=experiment.metric,
            direction=experiment.direction,
            objectives=[{"metric": o["metric"], "direction": o["direction"]} for o in wanted],
            pareto_front=True,
            trials=[read(t, last.get(t.id, {})) for t in ranked],
        )
    result = page(
        session,
        experiment=experiment,
        state=TrialState.COMPLETED,
        sort="objective",
        order=None,
        limit=k,
        offset=0,
    )
    return BestTrials(
        metric=experiment.metric,
        direction=experiment.direction,
        objectives=[{"metric": experiment.metric, "direction": experiment.direction}],
        pareto_front=False,
        trials=result.items,
    )


def outputs(session: Session, trial: Trial) -> Artifact:
    stored = artifacts.of_trial(session, trial.id, "outputs")
    if stored is None:
        raise NotFound(f"trial {trial.id} has no stored outputs (state {trial.state})")
    return stored


def weights(session: Session, trial: Trial) -> Artifact:
    stored = artifacts.of_trial(session, trial.id, "weights")
    if stored is None:
        raise NotFound(f"trial {trial.id} has no weights (state {trial.state})")
    return stored
