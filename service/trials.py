"""Trials: claim, report, complete, fail, and the queries over them.

Lock order, to keep PostgreSQL free of deadlocks: a trial's row before its experiment's row.
A claim locks only the experiment row (and inserts the new trial).
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from models import catalog
from service import experiments
from service.db import Database, notify_on_commit
from service.errors import Conflict, InvalidSpec, NotFound
from service.optimizer import Optimizer
from service.schemas import (
    Assignment,
    BestTrials,
    CompleteIn,
    FailIn,
    MetricRead,
    ReportIn,
    ReportOut,
    TrialDetail,
    TrialPage,
    TrialRead,
)
from service.states import ExperimentState, TrialState, check_trial_transition
from service.tables import Experiment, Trial, TrialMetric, TrialWeights, Worker, utcnow


def get(session: Session, trial_id: int) -> Trial:
    trial = session.get(Trial, trial_id)
    if trial is None:
        raise NotFound(f"trial {trial_id} not found")
    return trial


def _lock(session: Session, trial_id: int) -> Trial:
    trial = session.scalars(
        select(Trial)
        .where(Trial.id == trial_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if trial is None:
        raise NotFound(f"trial {trial_id} not found")
    return trial


def _running(session: Session, experiment_id: int) -> int:
    return (
        session.scalar(
            select(func.count()).where(
                Trial.experiment_id == experiment_id, Trial.state == TrialState.RUNNING
            )
        )
        or 0
    )


# --- the worker protocol -------------------------------------------------------------------


def claim_possible(session: Session, *, worker_id: int, experiment_id: int | None = None) -> bool:
    """Read-only look-ahead: whether `claim` would hand this worker a trial now.

    Lets idle workers poll without taking the database's write lock (SQLite) or row locks.
    Raises what `claim` would: NotFound for an unknown worker or experiment, Conflict for a
    cancelled experiment.
    """
    _check_claimant(session, worker_id, experiment_id)
    if _held(session, worker_id) is not None:
        return True
    return session.scalars(_claimable(experiment_id)).first() is not None


def try_claim(
    db: Database,
    optimizer: Optimizer,
    *,
    worker_id: int,
    experiment_id: int | None,
    look_first: bool,
) -> Assignment | None:
    """One claim attempt in its own transaction. With `look_first`, a read-only look comes
    first, so workers polling an idle service never take the write lock."""
    if look_first:
        with db.transaction(write=False) as session:
            if not claim_possible(session, worker_id=worker_id, experiment_id=experiment_id):
                return None
    with db.transaction() as session:
        return claim(session, optimizer=optimizer, worker_id=worker_id, experiment_id=experiment_id)


def claim(
    session: Session, *, optimizer: Optimizer, worker_id: int, experiment_id: int | None = None
) -> Assignment | None:
    """Start the next trial for a worker, or None when nothing may start now.

    A worker that already holds a running trial (its last claim's answer was lost) gets that
    trial back. Otherwise the oldest running experiment with budget and a free slot is locked,
    its sampler asked, and the trial inserted, all in this one transaction: so exactly
    n_trials trials are ever created and never more than max_concurrent run at once.
    """
    worker = _check_claimant(session, worker_id, experiment_id)
    worker.last_seen_at = utcnow()
    held = _held(session, worker_id)
    if held is not None:
        return _assignment(experiments.get(session, held.experiment_id), held)
    experiment = _lock_claimable(session, experiment_id)
    if experiment is None:
        return None
    params = optimizer.ask(session, experiment, experiment.trial_count)
    trial = Trial(
        experiment_id=experiment.id,
        number=experiment.trial_count,
        state=TrialState.RUNNING,
        params=params,
        worker_id=worker_id,
        last_epoch=0,
        has_weights=False,
    )
    experiment.trial_count += 1
    session.add(trial)
    session.flush()
    return _assignment(experiment, trial)


def _check_claimant(session: Session, worker_id: int, experiment_id: int | None) -> Worker:
    worker = session.get(Worker, worker_id)
    if worker is None:
        raise NotFound(f"worker {worker_id} not found")
    if experiment_id is not None:
        target = experiments.get(session, experiment_id)
        if target.state == ExperimentState.CANCELLED:
            raise Conflict(f"experiment {experiment_id} is cancelled")
    return worker


def _held(session: Session, worker_id: int) -> Trial | None:
    return session.scalars(
        select(Trial).where(Trial.worker_id == worker_id, Trial.state == TrialState.RUNNING)
    ).first()


def _claimable(experiment_id: int | None) -> Select[Experiment]:
    """Running experiments with budget left and a free slot, oldest first."""
    running = (
        select(func.count())
        .where(Trial.experiment_id == Experiment.id, Trial.state == TrialState.RUNNING)
        .scalar_subquery()
    )
    query = (
        select(Experiment)
        .where(
            Experiment.state == ExperimentState.RUNNING,
            Experiment.trial_count < Experiment.n_trials,
            running < Experiment.max_concurrent,
        )
        .order_by(Experiment.id)
        .limit(1)
    )
    if experiment_id is not None:
        query = query.where(Experiment.id == experiment_id)
    return query


def _lock_claimable(session: Session, experiment_id: int | None) -> Experiment | None:
    query = _claimable(experiment_id).with_for_update(skip_locked=True, of=Experiment)
    experiment = session.scalars(query.execution_options(populate_existing=True)).one_or_none()
    # Counted again now that the row is ours: the subquery above may have read an older snapshot.
    if experiment is None or _running(session, experiment.id) >= experiment.max_concurrent:
        return None
    return experiment


def _assignment(experiment: Experiment, trial: Trial) -> Assignment:
    spec = experiment.spec
    return Assignment(
        trial_id=trial.id,
        experiment_id=experiment.id,
        number=trial.number,
        model=spec["model"],
        dataset=spec["dataset"],
        objective=spec["objective"],
        params=trial.params,
        config=_config(spec, trial),
    )


def _config(spec: dict[str, Any], trial: Trial) -> dict[str, Any]:
    return catalog.resolve_hyperparameters(spec["model"], {**spec["fixed"], **trial.params})


def report(session: Session, *, optimizer: Optimizer, trial_id: int, body: ReportIn) -> ReportOut:
    """Record one epoch's metrics and answer whether the trial goes on.

    A repeated report of an epoch already recorded changes nothing. The trial stops when the
    pruner says so or when its experiment was cancelled.
    """
    trial = _lock(session, trial_id)
    if trial.state != TrialState.RUNNING:
        raise Conflict(f"trial {trial_id} is {trial.state}, not running")
    if body.epoch <= trial.last_epoch:
        return ReportOut(action="continue", reason="epoch already recorded")
    if body.epoch != trial.last_epoch + 1:
        raise Conflict(f"trial {trial_id} expects epoch {trial.last_epoch + 1}, got {body.epoch}")
    experiment = experiments.get(session, trial.experiment_id)
    objective = body.metrics.get(experiment.metric)
    if objective is None:
        raise InvalidSpec(
            f"the report lacks the objective metric {experiment.metric!r}",
            field=f"metrics.{experiment.metric}",
        )
    session.add(
        TrialMetric(trial_id=trial.id, epoch=body.epoch, objective=objective, values=body.metrics)
    )
    trial.last_epoch = body.epoch
    trial.last_objective = objective
    session.flush()
    if experiment.state == ExperimentState.CANCELLED:
        _finish(session, trial, TrialState.CANCELLED, reason="cancelled")
        return ReportOut(action="stop", reason="experiment cancelled")
    if optimizer.should_prune(session, experiment, trial, _curve(session, trial.id)):
        _finish(session, trial, TrialState.PRUNED, value=objective)
        return ReportOut(action="prune", reason=f"pruned at epoch {body.epoch}")
    return ReportOut(action="continue")


def _curve(session: Session, trial_id: int) -> dict[int, float]:
    rows = session.execute(
        select(TrialMetric.epoch, TrialMetric.objective).where(TrialMetric.trial_id == trial_id)
    )
    return {epoch: value for epoch, value in rows if value is not None}


def store_weights(session: Session, *, trial_id: int, data: bytes) -> None:
    """Keep a running trial's weights; uploading again replaces them."""
    trial = _lock(session, trial_id)
    if trial.state != TrialState.RUNNING:
        raise Conflict(f"trial {trial_id} is {trial.state}, not running")
    existing = session.get(TrialWeights, trial_id)
    if existing is not None:
        session.delete(existing)
        session.flush()
    session.add(TrialWeights(trial_id=trial_id, data=data, size=len(data)))
    trial.has_weights = True
    session.flush()


def complete(session: Session, *, trial_id: int, body: CompleteIn) -> Trial:
    """Finish a trial with its objective value. Completing it again the same way is a no-op."""
    trial = _lock(session, trial_id)
    if trial.state == TrialState.COMPLETED and trial.value == body.value:
        return trial
    if trial.state != TrialState.RUNNING:
        raise Conflict(f"trial {trial_id} is {trial.state}, not running")
    _finish(session, trial, TrialState.COMPLETED, value=body.value, best_epoch=body.epoch)
    return trial


def fail(session: Session, *, trial_id: int, body: FailIn) -> Trial:
    """End a trial as failed with the worker's reason. Failing it again is a no-op."""
    trial = _lock(session, trial_id)
    if trial.state == TrialState.FAILED:
        return trial
    if trial.state != TrialState.RUNNING:
        raise Conflict(f"trial {trial_id} is {trial.state}, not running")
    _finish(session, trial, TrialState.FAILED, reason=body.reason, message=body.message)
    return trial


def _finish(
    session: Session,
    trial: Trial,
    state: TrialState,
    *,
    value: float | None = None,
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
    trial.best_epoch = best_epoch
    trial.failure_reason = reason
    trial.failure_message = message
    if state == TrialState.COMPLETED and _better(value, experiment):
        experiment.best_value = value
        experiment.best_trial_id = trial.id
    session.flush()
    if _all_done(session, experiment):
        experiments.transition(session, experiment.id, ExperimentState.COMPLETED)
    notify_on_commit(session)


def _better(value: float | None, experiment: Experiment) -> bool:
    best = experiment.best_value
    if value is None:
        return False
    if best is None:
        return True
    return value > best if experiment.direction == "maximize" else value < best


def _all_done(session: Session, experiment: Experiment) -> bool:
    """The whole budget was handed out and nothing runs any more."""
    live = experiment.state in (ExperimentState.RUNNING, ExperimentState.PAUSED)
    spent = experiment.trial_count >= experiment.n_trials
    return live and spent and _running(session, experiment.id) == 0


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
        config=_config(experiment.spec, trial),
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
        query = query.order_by(Trial.number.desc() if order == "desc" else Trial.number)
    items = session.scalars(query.limit(limit).offset(offset)).all()
    return TrialPage(items=[read(t) for t in items], total=total, limit=limit, offset=offset)


def best(session: Session, *, experiment: Experiment, k: int) -> BestTrials:
    """The k completed trials with the best objective values, best first."""
    result = page(
        session,
        experiment=experiment,
        state=TrialState.COMPLETED,
        sort="objective",
        order=None,
        limit=k,
        offset=0,
    )
    return BestTrials(metric=experiment.metric, direction=experiment.direction, trials=result.items)


def weights(session: Session, trial: Trial) -> bytes:
    stored = session.get(TrialWeights, trial.id)
    if stored is None:
        raise NotFound(f"trial {trial.id} has no weights (state {trial.state})")
    return stored.data
