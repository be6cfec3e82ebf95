"""Experiment and trial rows by id, read or locked, and trial counts: the lookups every domain
module shares (404 for an id that does not exist).

Lock order, everywhere: a trial's row before its experiment's row. An experiment is locked FOR
NO KEY UPDATE, which does not conflict with the key-share lock that inserting or updating a
trial takes on its experiment (the foreign key): a transaction that touched a trial and then
locks its experiment never deadlocks with another doing the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar, cast

from sqlalchemy import and_, bindparam, func, select
from sqlalchemy.orm import Session

from sweep.service.errors import NotFound
from sweep.service.states import TrialState
from sweep.service.tables import Experiment, Trial


def experiment(session: Session, experiment_id: int) -> Experiment:
    return _get(session, Experiment, experiment_id)


def lock_experiment(session: Session, experiment_id: int) -> Experiment:
    """The experiment with its row locked until the transaction ends (waits for the lock)."""
    return _lock(session, Experiment, experiment_id)


def lock_experiments(session: Session, experiment_ids: set[int]) -> Sequence[Experiment]:
    """Several experiments locked in id order (the order every batch takes them in)."""
    return session.scalars(
        select(Experiment)
        .where(Experiment.id.in_(experiment_ids))
        .order_by(Experiment.id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    ).all()


def trial(session: Session, trial_id: int) -> Trial:
    return _get(session, Trial, trial_id)


def project_of_trial(session: Session, trial_id: int) -> str | None:
    """The project of a trial's experiment; None when there is no such trial."""
    return session.scalar(_PROJECT_OF_TRIAL, {"b_id": trial_id})


def lock_trial(session: Session, trial_id: int) -> Trial:
    return _lock(session, Trial, trial_id)


Row = TypeVar("Row", Experiment, Trial)


def _get(session: Session, table: type[Row], row_id: int) -> Row:
    found = session.get(table, row_id)
    if found is None:
        raise NotFound(f"{_NAMES[table]} {row_id} not found")
    return found


def _lock(session: Session, table: type[Row], row_id: int) -> Row:
    found = cast(Row | None, session.scalars(_LOCK[table], {"b_id": row_id}).one_or_none())
    if found is None:
        raise NotFound(f"{_NAMES[table]} {row_id} not found")
    return found


_NAMES: dict[type[Experiment | Trial], str] = {Experiment: "experiment", Trial: "trial"}


# A trial holding a slot of max_concurrent: running, and not told to have ended its training
# (its worker sends its model and result while it runs the next one).
TRAINING = and_(Trial.state == TrialState.RUNNING, Trial.trained_at.is_(None))


def count_training(session: Session, experiment_id: int) -> int:
    """How many of an experiment's trials hold a slot of max_concurrent: running, and not
    told to have ended their training (Trial.trained_at)."""
    return session.scalar(_COUNT_TRAINING, {"b_id": experiment_id}) or 0


def count_trials(session: Session, experiment_id: int, *states: TrialState) -> int:
    """How many of an experiment's trials are running (or in any of `states`)."""
    states = states or (TrialState.RUNNING,)
    return session.scalar(_COUNT_TRIALS, {"b_id": experiment_id, "b_states": states}) or 0


# Statements the hot paths run, built once (building one per call cost about as much as
# running it). Each is bound as :b_id.
_LOCK = {
    table: select(table)
    .where(table.id == bindparam("b_id"))
    .with_for_update(key_share=True)
    .execution_options(populate_existing=True)
    for table in (Experiment, Trial)
}
_PROJECT_OF_TRIAL = select(Experiment.project).join(Trial).where(Trial.id == bindparam("b_id"))
_COUNT_TRIALS = select(func.count()).where(
    Trial.experiment_id == bindparam("b_id"),
    Trial.state.in_(bindparam("b_states", expanding=True)),
)
_COUNT_TRAINING = select(func.count()).where(Trial.experiment_id == bindparam("b_id"), TRAINING)
