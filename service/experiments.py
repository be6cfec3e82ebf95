"""Experiments: create, read, list, and the lifecycle (pause, resume, cancel, delete)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from sweep.models import catalog
from sweep.service import datasets, specs, workers
from sweep.service.db import after_commit, notify_on_commit
from sweep.service.errors import Conflict, InvalidSpec, NotFound
from sweep.service.schemas import (
    BudgetChange,
    ExperimentCreate,
    ExperimentPage,
    ExperimentRead,
    TrialCounts,
)
from sweep.service.states import (
    ENDED_EXPERIMENT_STATES,
    ExperimentState,
    TrialState,
    check_experiment_transition,
)
from sweep.service.tables import Experiment, Trial, utcnow


def create(session: Session, *, spec: ExperimentCreate, project: str) -> Experiment:
    uploaded = None
    if spec.dataset.name not in catalog.DATASETS:
        found = datasets.find(session, project, spec.dataset.name)
        uploaded = datasets.for_spec(found) if found is not None else None
    normalized = specs.normalize(spec, uploaded)
    bundled_data = spec.dataset.name in catalog.BUNDLED_DATASETS
    experiment = Experiment(
        name=spec.name,
        project=project,
        state=ExperimentState.RUNNING,
        spec=normalized,
        metric=normalized["objective"]["metric"],
        direction=normalized["objective"]["direction"],
        n_trials=spec.budget.n_trials,
        max_concurrent=spec.budget.max_concurrent,
        max_retries=spec.budget.max_retries,
        deadline_at=_deadline(spec.budget.timeout_s),
        trial_count=0,
        finish_seq=0,
        needs_device=spec.requirements.device,
        needs_memory_gb=spec.requirements.min_device_memory_gb,
        needs_model=None if spec.model in catalog.BUNDLED_MODELS else spec.model,
        needs_dataset=None if bundled_data or uploaded else spec.dataset.name,
    )
    session.add(experiment)
    session.flush()
    notify_on_commit(session)
    return experiment


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


def change_budget(session: Session, experiment_id: int, change: BudgetChange) -> Experiment:
    """New n_trials and max_concurrent for a running or paused experiment; the next claim
    goes by them. n_trials cannot drop below the trials created or queued."""
    experiment = lock(session, experiment_id)
    if experiment.state in ENDED_EXPERIMENT_STATES:
        raise Conflict(f"experiment {experiment_id} is {experiment.state}; its budget is final")
    if change.n_trials is not None:
        taken = planned(session, experiment)
        if change.n_trials < taken:
            raise InvalidSpec(
                f"n_trials cannot go below the {taken} trials already created or queued",
                field="budget.n_trials",
            )
        experiment.n_trials = change.n_trials
    if change.max_concurrent is not None:
        experiment.max_concurrent = change.max_concurrent
    changed = change.model_dump(exclude_none=True)
    experiment.spec = {**experiment.spec, "budget": {**experiment.spec["budget"], **changed}}
    session.flush()
    notify_on_commit(session)  # claims waiting for a free slot may go now
    return experiment


def _deadline(timeout_s: float | None) -> datetime | None:
    return None if timeout_s is None else utcnow() + timedelta(seconds=timeout_s)


def get(session: Session, experiment_id: int) -> Experiment:
    experiment = session.get(Experiment, experiment_id)
    if experiment is None:
        raise NotFound(f"experiment {experiment_id} not found")
    return experiment


def lock(session: Session, experiment_id: int) -> Experiment:
    """The experiment with its row locked until the transaction ends (waits for the lock).

    FOR NO KEY UPDATE: it does not conflict with the key-share locks that inserting or
    updating a trial takes on its experiment (the foreign key), so a transaction that touched
    a trial and then locks its experiment never deadlocks with another doing the same.
    """
    experiment = session.scalars(
        select(Experiment)
        .where(Experiment.id == experiment_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if experiment is None:
        raise NotFound(f"experiment {experiment_id} not found")
    return experiment


def lock_all(session: Session, experiment_ids: set[int]) -> Sequence[Experiment]:
    """Several experiments locked in id order (the order every batch takes them in)."""
    return session.scalars(
        select(Experiment)
        .where(Experiment.id.in_(experiment_ids))
        .order_by(Experiment.id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    ).all()


def counts(session: Session, experiment_ids: Sequence[int]) -> dict[int, TrialCounts]:
    rows = session.execute(
        select(Trial.experiment_id, Trial.state, func.count())
        .where(Trial.experiment_id.in_(experiment_ids))
        .group_by(Trial.experiment_id, Trial.state)
    )
    result = {experiment_id: TrialCounts() for experiment_id in experiment_ids}
    for experiment_id, state, n in rows:
        setattr(result[experiment_id], state, n)
    return result


def read(
    experiment: Experiment, trial_counts: TrialCounts, waiting_for: str | None = None
) -> ExperimentRead:
    return ExperimentRead(
        id=experiment.id,
        name=experiment.name,
        project=experiment.project,
        state=experiment.state,
        spec=experiment.spec,
        n_trials=experiment.n_trials,
        max_concurrent=experiment.max_concurrent,
        trials_created=experiment.trial_count,
        counts=trial_counts,
        best_value=experiment.best_value,
        best_trial_id=experiment.best_trial_id,
        stop_reason=experiment.stop_reason,
        waiting_for=waiting_for,
        created_at=experiment.created_at,
        updated_at=experiment.updated_at,
        finished_at=experiment.finished_at,
    )


def status(session: Session, experiment: Experiment) -> ExperimentRead:
    why = workers.waiting_for(experiment, workers.live(session))
    return read(experiment, counts(session, [experiment.id])[experiment.id], why)


def page(
    session: Session,
    *,
    project: str | None,
    state: ExperimentState | None,
    limit: int,
    offset: int,
) -> ExperimentPage:
    query = select(Experiment)
    if project is not None:
        query = query.where(Experiment.project == project)
    if state is not None:
        query = query.where(Experiment.state == state)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    items = session.scalars(query.order_by(Experiment.id.desc()).limit(limit).offset(offset)).all()
    all_counts = counts(session, [e.id for e in items])
    live = workers.live(session)
    return ExperimentPage(
        items=[read(e, all_counts[e.id], workers.waiting_for(e, live)) for e in items],
        total=total,
        limit=limit,
        offset=offset,
    )


def transition(
    session: Session, experiment_id: int, target: ExperimentState, reason: str | None = None
) -> Experiment:
    """Move an experiment to `target`; Conflict if its state machine does not allow it."""
    experiment = lock(session, experiment_id)
    check_experiment_transition(experiment.state, target)
    experiment.state = target
    if target in ENDED_EXPERIMENT_STATES:
        experiment.finished_at = utcnow()
        experiment.stop_reason = reason
    if target == ExperimentState.RUNNING:
        notify_on_commit(session)
    session.flush()
    return experiment


def remove(session: Session, experiment_id: int, on_deleted: Callable[[], None]) -> None:
    """Delete an experiment with its trials; `on_deleted` runs once that is committed."""
    # Trials before the experiment: the lock order every trial update follows.
    session.execute(
        select(Trial.id)
        .where(Trial.experiment_id == experiment_id)
        .order_by(Trial.id)
        .with_for_update()
    )
    session.execute(
        select(Experiment.id).where(Experiment.id == experiment_id).with_for_update()
    )  # a plain FOR UPDATE: deleting the row changes its key
    session.execute(delete(Experiment).where(Experiment.id == experiment_id))
    after_commit(session, on_deleted)
