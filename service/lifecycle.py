"""State changes and what follows from them: a trial finishing or going back to the queue; an
experiment pausing, resuming or ending, completing once its last trial is done (failing if
none completed), failing after too many errors in a row, its budget shrinking when the search
space is exhausted.

Every state change goes through `move`, which checks the transition tables of
sweep.service.states. Lock order, as everywhere: a trial's row before its experiment's row.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sweep.service import artifacts, rows, webhooks
from sweep.service.db import notify_on_commit
from sweep.service.states import (
    ENDED_EXPERIMENT_STATES,
    ExperimentState,
    TrialState,
    check_experiment_transition,
    check_trial_transition,
)
from sweep.service.tables import Experiment, Trial, utcnow

LIVE_EXPERIMENT_STATES = (ExperimentState.RUNNING, ExperimentState.PAUSED)


def move(row: Trial | Experiment, target: TrialState | ExperimentState) -> None:
    """Put a trial or an experiment in `target`; Conflict unless its state machine allows it."""
    if isinstance(row, Trial):
        check_trial_transition(row.state, TrialState(target))
    else:
        check_experiment_transition(row.state, ExperimentState(target))
    row.state = target


# --- trials --------------------------------------------------------------------------------


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
    experiment: Experiment | None = None,
) -> None:
    """End a trial in `state` (final) with its outcome; its experiment (pass it when this
    transaction has locked it already) keeps its best value, counts errors in a row, and
    completes when this was its last trial."""
    move(trial, state)
    if experiment is None:
        experiment = rows.lock_experiment(session, trial.experiment_id)
    experiment.finish_seq += 1
    trial.finish_seq = experiment.finish_seq
    trial.finished_at = utcnow()
    trial.value = value
    trial.values = values if values is not None else None if value is None else [value]
    trial.best_epoch = best_epoch
    trial.failure_reason = reason
    trial.failure_message = message
    trial.lease_expires_at = None
    best = state == TrialState.COMPLETED and _better(value, experiment)
    if best:
        experiment.best_value = value
        experiment.best_trial_id = trial.id
        experiment.best_trial_number = trial.number
    if best or state == TrialState.FAILED:
        webhooks.trial_ended(session, experiment, trial, best=best)
    artifacts.discard(session, [trial.id], "checkpoint")
    artifacts.retain_models(session, experiment)
    session.flush()
    if _too_many_errors(experiment, state, reason):
        why = f"{experiment.consecutive_errors} trials in a row failed with an error: {message}"
        end_experiment(session, experiment.id, ExperimentState.FAILED, why[:500])
    else:
        complete_if_done(session, experiment)
    notify_on_commit(session)


def requeue(session: Session, trial: Trial, why: str) -> None:
    """A running trial back to the queue for another attempt; `why` (lost, preempted) shows
    until it starts. In an experiment that has ended meanwhile nothing would claim it: it ends
    as cancelled."""
    experiment = rows.lock_experiment(session, trial.experiment_id)
    if experiment.state in ENDED_EXPERIMENT_STATES:
        message = f"{why} after the experiment ended ({experiment.state})"
        finish(session, trial, TrialState.CANCELLED, reason="cancelled", message=message)
        return
    move(trial, TrialState.QUEUED)
    trial.failure_reason = why
    trial.worker_id = None
    trial.lease_expires_at = None
    session.flush()
    notify_on_commit(session)


def _too_many_errors(experiment: Experiment, state: TrialState, reason: str | None) -> bool:
    """Count errors in a row (a completed or pruned trial resets the count)."""
    if state in (TrialState.COMPLETED, TrialState.PRUNED):
        experiment.consecutive_errors = 0
    if state != TrialState.FAILED or reason != "error":
        return False
    experiment.consecutive_errors += 1
    limit = experiment.spec["budget"]["max_consecutive_errors"]
    live = experiment.state in LIVE_EXPERIMENT_STATES
    return live and limit > 0 and experiment.consecutive_errors >= limit


def _better(value: float | None, experiment: Experiment) -> bool:
    best = experiment.best_value
    if value is None:
        return False
    if best is None:
        return True
    return value > best if experiment.direction == "maximize" else value < best


# --- experiments ---------------------------------------------------------------------------


def move_experiment(
    session: Session, experiment_id: int, target: ExperimentState, reason: str | None = None
) -> Experiment:
    """Lock an experiment and put it in `target` (pause, resume, or an end with `reason`)."""
    experiment = rows.lock_experiment(session, experiment_id)
    move(experiment, target)
    if target in ENDED_EXPERIMENT_STATES:
        experiment.finished_at = utcnow()
        experiment.stop_reason = reason
        webhooks.experiment_ended(session, experiment)
    if target == ExperimentState.RUNNING:
        notify_on_commit(session)  # claims may go on
    elif target in ENDED_EXPERIMENT_STATES:
        notify_on_commit(session, end=True)  # reads waiting for its end are answered
    session.flush()
    return experiment


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
    experiment = move_experiment(session, experiment_id, state, reason)
    for trial in queued:
        finish(session, trial, TrialState.CANCELLED, reason="cancelled", message=reason)
    return experiment


def end_overdue(session: Session, *, now: datetime | None = None) -> int:
    """Stop experiments whose budget.timeout_s has passed; returns how many."""
    overdue = session.scalars(
        select(Experiment.id)
        .where(
            Experiment.state.in_(LIVE_EXPERIMENT_STATES),
            Experiment.deadline_at < (now or utcnow()),
        )
        .order_by(Experiment.id)  # the order every batch locks experiments in
    ).all()
    for experiment_id in overdue:
        state, why = outcome(session, experiment_id, "timed out")
        end_experiment(session, experiment_id, state, why or "timed out")
    return len(overdue)


def complete_if_done(session: Session, experiment: Experiment) -> None:
    """End the experiment once its whole budget was handed out and nothing runs or waits for
    a retry any more: completed, or failed if no trial completed."""
    live = experiment.state in LIVE_EXPERIMENT_STATES
    spent = experiment.trial_count >= experiment.n_trials
    if not (live and spent):
        return
    unfinished = rows.count_trials(session, experiment.id, TrialState.RUNNING, TrialState.QUEUED)
    if unfinished == 0:
        state, why = outcome(session, experiment.id, experiment.stop_reason)
        move_experiment(session, experiment.id, state, why)


def outcome(
    session: Session, experiment_id: int, reason: str | None
) -> tuple[ExperimentState, str | None]:
    """How an experiment that ran its course ends: completed (with `reason`, if any), unless
    no trial completed; then failed, with a reason that counts what became of its trials,
    e.g. "all 8 trials failed: 8 diverged"."""
    ended = session.execute(
        select(Trial.state, Trial.failure_reason, func.count())
        .where(Trial.experiment_id == experiment_id)
        .group_by(Trial.state, Trial.failure_reason)
    ).all()
    counts: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    for state, failure, n in ended:
        counts[state] += n
        if state == TrialState.FAILED:
            failures[failure or "error"] += n  # reasons: diverged, error, interrupted, lost
    if counts[TrialState.COMPLETED] > 0:
        return ExperimentState.COMPLETED, reason
    total = sum(counts.values())
    kinds = ", ".join(f"{n} {kind}" for kind, n in failures.most_common())
    if total == 0:
        why = "no trial ran"
    elif counts[TrialState.FAILED] == total == 1:
        why = f"its only trial failed: {kinds.removeprefix('1 ')}"
    elif counts[TrialState.FAILED] == total:
        why = f"all {total} trials failed: {kinds}"
    else:
        parts = [f"{n} {state}" for state, n in counts.most_common()]
        why = f"no trial of {total} completed: {', '.join(parts)}"
        if failures:
            why += f" (failed: {kinds})"
    return ExperimentState.FAILED, f"{reason}; {why}" if reason else why


def exhaust(session: Session, experiment: Experiment) -> None:
    """Every configuration of the space has been handed out: the budget shrinks to the trials
    created, and the experiment completes now if none of them is left to finish."""
    experiment.n_trials = experiment.trial_count
    experiment.stop_reason = f"search space exhausted after {experiment.trial_count} trials"
    complete_if_done(session, experiment)
    notify_on_commit(session)
