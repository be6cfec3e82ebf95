"""Trials: what a worker tells about its attempt (reports, weights, the end), and queries.

Every call about an attempt carries its token (service.claims hands them out); a stale one
gets 409 and changes nothing. Lock order, to keep PostgreSQL free of deadlocks: a trial's row
before its experiment's row.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from sweep.models import catalog
from sweep.service import experiments, search, specs
from sweep.service.db import notify_on_commit
from sweep.service.errors import Conflict, InvalidSpec, NotFound
from sweep.service.optimizer import Optimizer
from sweep.service.schemas import (
    BestTrials,
    CompleteIn,
    FailIn,
    MetricRead,
    ReportIn,
    ReportOut,
    TrialDetail,
    TrialPage,
    TrialRead,
    WarmStartTrial,
)
from sweep.service.states import (
    ENDED_EXPERIMENT_STATES,
    ExperimentState,
    TrialState,
    check_trial_transition,
)
from sweep.service.tables import (
    Experiment,
    Trial,
    TrialCheckpoint,
    TrialMetric,
    TrialWeights,
    utcnow,
)

# The system attr of trials that came in finished (warm start), not run here.
IMPORTED = "sweep:imported"


def get(session: Session, trial_id: int) -> Trial:
    trial = session.get(Trial, trial_id)
    if trial is None:
        raise NotFound(f"trial {trial_id} not found")
    return trial


def _lock(session: Session, trial_id: int) -> Trial:
    trial = session.scalars(
        select(Trial)
        .where(Trial.id == trial_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if trial is None:
        raise NotFound(f"trial {trial_id} not found")
    return trial


def running(session: Session, experiment_id: int, *states: TrialState) -> int:
    """How many of an experiment's trials are running (or in any of `states`)."""
    states = states or (TrialState.RUNNING,)
    query = select(func.count()).where(
        Trial.experiment_id == experiment_id, Trial.state.in_(states)
    )
    return session.scalar(query) or 0


def attempt(session: Session, trial_id: int, token: str) -> Trial:
    """The trial, locked, if `token` is its current attempt's; Conflict when it is stale."""
    trial = _lock(session, trial_id)
    if trial.token != token:
        raise Conflict(f"trial {trial_id}: this attempt was superseded (stale token)")
    return trial


# --- the worker protocol -------------------------------------------------------------------


def config(spec: dict[str, Any], trial: Trial) -> dict[str, Any]:
    """Every hyperparameter the trial trains with: params, the spec's fixed values, defaults."""
    return catalog.resolve_hyperparameters(spec["model"], {**spec["fixed"], **trial.params})


def report(
    session: Session,
    *,
    optimizer: Optimizer,
    trial_id: int,
    token: str,
    body: ReportIn,
    lease_seconds: float,
) -> ReportOut:
    """Record one epoch's metrics, extend the lease, and answer whether the trial goes on.

    A repeated report of an epoch already recorded changes nothing and gets the same answer,
    even when that answer ended the trial. The trial stops when the pruner says so or when
    its experiment has ended.
    """
    trial = attempt(session, trial_id, token)
    again = _answer_again(trial, body.epoch)
    if again is not None:
        return again
    if trial.state != TrialState.RUNNING:
        raise Conflict(f"trial {trial_id} is {trial.state}, not running")
    trial.lease_expires_at = utcnow() + timedelta(seconds=lease_seconds)
    if body.epoch != trial.last_epoch + 1:
        raise Conflict(f"trial {trial_id} expects epoch {trial.last_epoch + 1}, got {body.epoch}")
    experiment = experiments.get(session, trial.experiment_id)
    for wanted in specs.objectives(experiment.spec):
        if wanted["metric"] not in body.metrics:
            raise InvalidSpec(
                f"the report lacks the objective metric {wanted['metric']!r}",
                field=f"metrics.{wanted['metric']}",
            )
    objective = body.metrics[experiment.metric]
    session.add(
        TrialMetric(trial_id=trial.id, epoch=body.epoch, objective=objective, values=body.metrics)
    )
    trial.last_epoch = body.epoch
    trial.last_objective = objective
    session.flush()
    if experiment.state in ENDED_EXPERIMENT_STATES:
        why = f"experiment {experiment.state}"
        finish(session, trial, TrialState.CANCELLED, reason="cancelled", message=why)
        return ReportOut(action="stop", reason=why)
    if optimizer.should_prune(session, experiment, trial, _curve(session, trial.id)):
        finish(session, trial, TrialState.PRUNED, value=objective)
        return ReportOut(action="prune", reason=f"pruned at epoch {body.epoch}")
    return ReportOut(action="continue")


def _answer_again(trial: Trial, epoch: int) -> ReportOut | None:
    """The answer an already recorded epoch got the first time, or None for a new epoch."""
    if epoch > trial.last_epoch:
        return None
    if epoch == trial.last_epoch and trial.state == TrialState.PRUNED:
        return ReportOut(action="prune", reason=f"pruned at epoch {epoch}")
    if epoch == trial.last_epoch and trial.state == TrialState.CANCELLED:
        return ReportOut(action="stop", reason=trial.failure_message)
    if trial.state != TrialState.RUNNING:
        return None  # the trial ended later, some other way: a conflict, as for any report
    return ReportOut(action="continue")


def _curve(session: Session, trial_id: int) -> dict[int, float]:
    rows = session.execute(
        select(TrialMetric.epoch, TrialMetric.objective).where(TrialMetric.trial_id == trial_id)
    )
    return {epoch: value for epoch, value in rows if value is not None}


def store_weights(session: Session, *, trial_id: int, token: str, data: bytes) -> None:
    """Keep a running trial's weights; uploading again replaces them."""
    running_attempt(session, trial_id, token)
    existing = session.get(TrialWeights, trial_id)
    if existing is not None:
        session.delete(existing)
        session.flush()
    session.add(TrialWeights(trial_id=trial_id, data=data, size=len(data)))
    get(session, trial_id).has_weights = True
    session.flush()


def complete(session: Session, *, trial_id: int, token: str, body: CompleteIn) -> Trial:
    """Finish a trial with its objective value. Completing it again the same way is a no-op."""
    trial = attempt(session, trial_id, token)
    if trial.state == TrialState.COMPLETED and trial.value == body.value:
        return trial
    if trial.state != TrialState.RUNNING:
        raise Conflict(f"trial {trial_id} is {trial.state}, not running")
    if body.epoch is not None and body.epoch > trial.last_epoch:
        raise Conflict(
            f"trial {trial_id}: epoch {body.epoch} was never reported "
            f"(last reported: {trial.last_epoch})"
        )
    wanted = specs.objectives(experiments.get(session, trial.experiment_id).spec)
    if len(wanted) == 1:
        finish(session, trial, TrialState.COMPLETED, value=body.value, best_epoch=body.epoch)
        return trial
    # Several objectives: each one's value at the epoch the first objective chose.
    epoch = body.epoch or trial.last_epoch
    metrics = session.get(TrialMetric, (trial.id, epoch))
    if metrics is None:
        raise Conflict(f"trial {trial_id} reported no epoch; its objectives have no values")
    values = [float(metrics.values[o["metric"]]) for o in wanted]
    finish(session, trial, TrialState.COMPLETED, value=values[0], values=values, best_epoch=epoch)
    return trial


def fail(session: Session, *, trial_id: int, token: str, body: FailIn) -> Trial:
    """End a trial as failed with the worker's reason. Failing it again is a no-op."""
    trial = attempt(session, trial_id, token)
    if trial.state == TrialState.FAILED:
        return trial
    if trial.state != TrialState.RUNNING:
        raise Conflict(f"trial {trial_id} is {trial.state}, not running")
    finish(session, trial, TrialState.FAILED, reason=body.reason, message=body.message)
    return trial


def running_attempt(session: Session, trial_id: int, token: str) -> Trial:
    trial = attempt(session, trial_id, token)
    if trial.state != TrialState.RUNNING:
        raise Conflict(f"trial {trial_id} is {trial.state}, not running")
    return trial


def end_experiment(
    session: Session, experiment_id: int, state: ExperimentState, reason: str
) -> Experiment:
    """End an experiment early (cancelled, timed out, failed): queued trials end now, running
    ones at their next report or heartbeat."""
    queued = session.scalars(
        select(Trial)
        .where(Trial.experiment_id == experiment_id, Trial.state == TrialState.QUEUED)
        .order_by(Trial.id)
        .with_for_update(skip_locked=True)  # callers may hold the experiment row already
    ).all()
    experiment = experiments.transition(session, experiment_id, state, reason)
    for trial in queued:
        finish(session, trial, TrialState.CANCELLED, reason="cancelled", message=reason)
    return experiment


def end_overdue(session: Session, *, now: datetime | None = None) -> int:
    """Stop experiments whose budget.timeout_s has passed; returns how many."""
    overdue = session.scalars(
        select(Experiment.id)
        .where(
            Experiment.state.in_((ExperimentState.RUNNING, ExperimentState.PAUSED)),
            Experiment.deadline_at < (now or utcnow()),
        )
        .order_by(Experiment.id)  # the order every batch locks experiments in
    ).all()
    for experiment_id in overdue:
        end_experiment(session, experiment_id, ExperimentState.COMPLETED, "timed out")
    return len(overdue)


def finish(
    session: Session,
    trial: Trial,
    state: TrialState,
    *,
    value: float | None = None,
    values: list[float] | None = None,
    best_epoch: int | None = None,
    reason: str | None = None,
    message: str | None = None,
) -> None:
    check_trial_transition(trial.state, state)
    experiment = experiments.lock(session, trial.experiment_id)
    experiment.finish_seq += 1
    trial.state = state
    trial.finish_seq = experiment.finish_seq
    trial.finished_at = utcnow()
    trial.value = value
    trial.values = values if values is not None else None if value is None else [value]
    trial.best_epoch = best_epoch
    trial.failure_reason = reason
    trial.failure_message = message
    trial.lease_expires_at = None
    if state == TrialState.COMPLETED and _better(value, experiment):
        experiment.best_value = value
        experiment.best_trial_id = trial.id
    session.execute(delete(TrialCheckpoint).where(TrialCheckpoint.trial_id == trial.id))
    session.flush()
    if _too_many_errors(experiment, state, reason):
        why = f"{experiment.consecutive_errors} trials in a row failed with an error: {message}"
        end_experiment(session, experiment.id, ExperimentState.FAILED, why[:500])
    else:
        complete_if_done(session, experiment)
    notify_on_commit(session)


def complete_if_done(session: Session, experiment: Experiment) -> None:
    if _all_done(session, experiment):
        experiments.transition(
            session, experiment.id, ExperimentState.COMPLETED, experiment.stop_reason
        )


def exhaust(session: Session, experiment: Experiment) -> None:
    """Every configuration of the space has been handed out: the budget shrinks to the trials
    created, and the experiment completes now if none of them is left to finish."""
    experiment.n_trials = experiment.trial_count
    experiment.stop_reason = f"search space exhausted after {experiment.trial_count} trials"
    complete_if_done(session, experiment)
    notify_on_commit(session)


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
        finish(session, trial, state, value=finished.values[0], values=finished.values)
    experiment.trial_count = len(given)


def enqueue(session: Session, experiment_id: int, params: dict[str, Any]) -> Trial:
    """Queue a trial with the given params; it runs before the sampler's next suggestion and
    counts toward n_trials. It gets its number when it first starts."""
    experiment = experiments.lock(session, experiment_id)
    if experiment.state in ENDED_EXPERIMENT_STATES:
        raise Conflict(f"experiment {experiment_id} is {experiment.state}")
    specs.check_enqueued(experiment.spec, params)
    planned = experiments.planned(session, experiment)
    if planned >= experiment.n_trials:
        raise Conflict(
            f"the budget of {experiment.n_trials} trials is taken ({planned} created or "
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
    return trial


def _repeats(session: Session, experiment: Experiment, params: dict[str, Any]) -> bool:
    key = search.config_key(params)
    existing = session.scalars(select(Trial.params).where(Trial.experiment_id == experiment.id))
    return any(search.config_key(p) == key for p in existing)


def _too_many_errors(experiment: Experiment, state: TrialState, reason: str | None) -> bool:
    """Count errors in a row (a completed or pruned trial resets the count)."""
    if state in (TrialState.COMPLETED, TrialState.PRUNED):
        experiment.consecutive_errors = 0
    if state != TrialState.FAILED or reason != "error":
        return False
    experiment.consecutive_errors += 1
    limit = experiment.spec["budget"]["max_consecutive_errors"]
    live = experiment.state in (ExperimentState.RUNNING, ExperimentState.PAUSED)
    return live and limit > 0 and experiment.consecutive_errors >= limit


def _better(value: float | None, experiment: Experiment) -> bool:
    best = experiment.best_value
    if value is None:
        return False
    if best is None:
        return True
    return value > best if experiment.direction == "maximize" else value < best


def _all_done(session: Session, experiment: Experiment) -> bool:
    """The whole budget was handed out and nothing runs or waits for a retry any more."""
    live = experiment.state in (ExperimentState.RUNNING, ExperimentState.PAUSED)
    spent = experiment.trial_count >= experiment.n_trials
    unfinished = running(session, experiment.id, TrialState.RUNNING, TrialState.QUEUED)
    return live and spent and unfinished == 0


# --- queries -------------------------------------------------------------------------------


def read(trial: Trial) -> TrialRead:
    return TrialRead.model_validate(trial, from_attributes=True)


def detail(session: Session, trial: Trial) -> TrialDetail:
    experiment = experiments.get(session, trial.experiment_id)
    metrics = session.scalars(
        select(TrialMetric).where(TrialMetric.trial_id == trial.id).order_by(TrialMetric.epoch)
    ).all()
    return TrialDetail(
        **read(trial).model_dump(),
        config=config(experiment.spec, trial),
        metrics=[MetricRead.model_validate(m, from_attributes=True) for m in metrics],
    )


def page(
    session: Session,
    *,
    experiment: Experiment,
    state: TrialState | None,
    sort: Literal["number", "objective"],
    order: Literal["asc", "desc"] | None,
    limit: int,
    offset: int,
) -> TrialPage:
    query = select(Trial).where(Trial.experiment_id == experiment.id)
    if state is not None:
        query = query.where(Trial.state == state)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if sort == "objective":
        best_first = "desc" if experiment.direction == "maximize" else "asc"
        column = Trial.value.desc() if (order or best_first) == "desc" else Trial.value.asc()
        query = query.order_by(column.nulls_last(), Trial.number)
    else:
        by_number = Trial.number.desc() if order == "desc" else Trial.number.asc()
        query = query.order_by(by_number.nulls_last(), Trial.id)
    items = session.scalars(query.limit(limit).offset(offset)).all()
    return TrialPage(items=[read(t) for t in items], total=total, limit=limit, offset=offset)


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
        return BestTrials(
            metric=experiment.metric,
            direction=experiment.direction,
            objectives=[{"metric": o["metric"], "direction": o["direction"]} for o in wanted],
            pareto_front=True,
            trials=[read(t) for t in ranked],
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


def weights(session: Session, trial: Trial) -> bytes:
    stored = session.get(TrialWeights, trial.id)
    if stored is None:
        raise NotFound(f"trial {trial.id} has no weights (state {trial.state})")
    return stored.data
