"""Experiments: submit, read, list, change the budget, pause, resume, cancel and delete.

How an experiment ends and what that does to its trials is sweep.service.lifecycle's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from sweep.models import catalog
from sweep.service import artifacts, datasets, lifecycle, rows, specs, trials, workers
from sweep.service.db import Database, after_commit, notify_on_commit
from sweep.service.errors import Conflict, InvalidSpec
from sweep.service.schemas import (
    BudgetChange,
    ExperimentCreate,
    ExperimentPage,
    ExperimentRead,
    TrialCounts,
    trial_name,
)
from sweep.service.states import ENDED_EXPERIMENT_STATES, ExperimentState
from sweep.service.tables import Experiment, Trial, utcnow


def submit(
    session: Session, *, spec: ExperimentCreate, project: str, idempotency_key: str | None = None
) -> tuple[ExperimentRead, bool]:
    """A new running experiment (with its warm-start trials, if the spec brings some); and
    whether it is rather the one an earlier submission with the same `idempotency_key` made
    (the spec must then be the same: a Conflict otherwise)."""
    if idempotency_key is not None:
        earlier = session.scalars(
            select(Experiment).where(
                Experiment.project == project, Experiment.idempotency_key == idempotency_key
            )
        ).first()
        if earlier is not None:
            if (earlier.name, earlier.spec) != (spec.name, _normalized(session, spec, project)):
                raise Conflict(
                    f"Idempotency-Key {idempotency_key!r} submitted experiment {earlier.id} "
                    "with another spec; use a new key for a new experiment",
                    field="Idempotency-Key",
                )
            return status(session, earlier), True
    experiment = create(session, spec=spec, project=project)
    experiment.idempotency_key = idempotency_key
    trials.warm_start(session, experiment, spec.warm_start)
    return status(session, experiment), False


def _normalized(session: Session, spec: ExperimentCreate, project: str) -> dict[str, Any]:
    """The spec as it would be stored, the project's uploaded dataset it names looked up."""
    uploaded = None
    if spec.dataset is not None and spec.dataset.name not in catalog.datasets():
        found = datasets.find(session, project, spec.dataset.name)
        uploaded = datasets.for_spec(found) if found is not None else None
    return specs.normalize(spec, uploaded)


def create(session: Session, *, spec: ExperimentCreate, project: str) -> Experiment:
    normalized = _normalized(session, spec, project)
    uploaded = "sha256" in (normalized.get("dataset") or {})
    plugin_model = spec.model is not None and spec.model not in catalog.BUNDLED_MODELS
    plugin_data = (
        spec.dataset is not None
        and spec.dataset.name not in catalog.BUNDLED_DATASETS
        and not uploaded
    )
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
        needs_model=spec.model if plugin_model else None,
        needs_dataset=spec.dataset.name if spec.dataset and plugin_data else None,
        needs_program=spec.program,
        needs_gpus=spec.requirements.resources.gpus,
    )
    session.add(experiment)
    session.flush()
    notify_on_commit(session)
    return experiment


def change_budget(session: Session, experiment_id: int, change: BudgetChange) -> ExperimentRead:
    """New n_trials and max_concurrent for a running or paused experiment; the next claim
    goes by them. n_trials cannot drop below the trials created or queued (and when it drops
    to them, with every trial finished, the experiment completes)."""
    experiment = rows.lock_experiment(session, experiment_id)
    if experiment.state in ENDED_EXPERIMENT_STATES:
        raise Conflict(f"experiment {experiment_id} is {experiment.state}; its budget is final")
    if change.n_trials is not None:
        taken = trials.planned(session, experiment)
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
    lifecycle.complete_if_done(session, experiment)
    return status(session, experiment)


def _deadline(timeout_s: float | None) -> datetime | None:
    return None if timeout_s is None else utcnow() + timedelta(seconds=timeout_s)


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
        best_trial=trial_name(experiment.id, experiment.best_trial_number),
        stop_reason=experiment.stop_reason,
        waiting_for=waiting_for,
        created_at=experiment.created_at,
        updated_at=experiment.updated_at,
        finished_at=experiment.finished_at,
    )


def status(session: Session, experiment: Experiment) -> ExperimentRead:
    why = workers.waiting_for(experiment, workers.live(session))
    return read(experiment, counts(session, [experiment.id])[experiment.id], why)


async def until_ended(
    db: Database, experiment_id: int, project: str | None, seconds: float, poll: float
) -> None:
    """Return once the experiment has ended, or after `seconds`; at once if `project` (None:
    every project) does not see it. Holds no transaction while it waits: it looks again when
    this process hears that an experiment ended, and every `poll` seconds in case that news
    was missed; other changes cost it nothing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    ends, looked = -1, 0.0
    while True:
        generation = db.changes.generation
        if db.changes.ends != ends or loop.time() - looked >= poll:
            ends, looked = db.changes.ends, loop.time()
            if await run_in_threadpool(_ended_or_unseen, db, experiment_id, project):
                return
        left = deadline - loop.time()
        if left <= 0:
            return
        await db.changes.wait(generation, min(left, max(0.0, looked + poll - loop.time())))


def _ended_or_unseen(db: Database, experiment_id: int, project: str | None) -> bool:
    with db.transaction(write=False) as session:
        row = session.execute(
            select(Experiment.state, Experiment.project).where(Experiment.id == experiment_id)
        ).first()
    if row is None or (project is not None and row.project != project):
        return True  # the caller is answered 404 at once
    return row.state in ENDED_EXPERIMENT_STATES


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


def pause(session: Session, experiment_id: int) -> ExperimentRead:
    """No new trials are handed out; running ones go on."""
    paused = lifecycle.move_experiment(session, experiment_id, ExperimentState.PAUSED)
    return status(session, paused)


def resume(session: Session, experiment_id: int) -> ExperimentRead:
    resumed = lifecycle.move_experiment(session, experiment_id, ExperimentState.RUNNING)
    return status(session, resumed)


def cancel(session: Session, experiment_id: int) -> ExperimentRead:
    """Ended: queued trials now, running ones at their next report."""
    reason = "cancelled by request"
    ended = lifecycle.end_experiment(session, experiment_id, ExperimentState.CANCELLED, reason)
    return status(session, ended)


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
    artifacts.discard_experiment(session, experiment_id)
    session.execute(delete(Experiment).where(Experiment.id == experiment_id))
    after_commit(session, on_deleted)
