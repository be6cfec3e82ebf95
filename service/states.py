"""The trial and experiment state machines: one enum each, one table of allowed transitions."""

from __future__ import annotations

import enum

from sweep.service.errors import Conflict


class TrialState(enum.StrEnum):
    QUEUED = "queued"  # waiting for a new attempt: its worker vanished or let it go
    RUNNING = "running"
    COMPLETED = "completed"
    PRUNED = "pruned"  # stopped early by the pruner; its last value counts for the sampler
    FAILED = "failed"  # diverged, raised, or lost more often than max_retries
    CANCELLED = "cancelled"  # stopped because the experiment was cancelled


FINISHED_TRIAL_STATES = frozenset(
    {TrialState.COMPLETED, TrialState.PRUNED, TrialState.FAILED, TrialState.CANCELLED}
)

TRIAL_TRANSITIONS: dict[TrialState, frozenset[TrialState]] = {
    # A claim creates a trial directly in RUNNING; finished states are final.
    TrialState.RUNNING: FINISHED_TRIAL_STATES | {TrialState.QUEUED},  # lease lost or released
    TrialState.QUEUED: frozenset({TrialState.RUNNING, TrialState.CANCELLED}),
    TrialState.COMPLETED: frozenset(),
    TrialState.PRUNED: frozenset(),
    TrialState.FAILED: frozenset(),
    TrialState.CANCELLED: frozenset(),
}


class ExperimentState(enum.StrEnum):
    RUNNING = "running"  # trials are handed out
    PAUSED = "paused"  # no new claims; running trials go on
    COMPLETED = "completed"  # every trial of the budget has finished
    CANCELLED = "cancelled"  # no new claims; running trials stop at their next report
    FAILED = "failed"  # no trial completed, or too many in a row failed with an error


# An experiment in one of these hands out nothing and tells running trials to stop.
ENDED_EXPERIMENT_STATES = frozenset(
    {ExperimentState.COMPLETED, ExperimentState.CANCELLED, ExperimentState.FAILED}
)

EXPERIMENT_TRANSITIONS: dict[ExperimentState, frozenset[ExperimentState]] = {
    ExperimentState.RUNNING: frozenset(
        {
            ExperimentState.PAUSED,
            ExperimentState.COMPLETED,
            ExperimentState.CANCELLED,
            ExperimentState.FAILED,
        }
    ),
    # A paused experiment whose last running trial finishes with the budget spent completes.
    ExperimentState.PAUSED: frozenset(
        {
            ExperimentState.RUNNING,
            ExperimentState.COMPLETED,
            ExperimentState.CANCELLED,
            ExperimentState.FAILED,
        }
    ),
    ExperimentState.COMPLETED: frozenset(),
    ExperimentState.CANCELLED: frozenset(),
    ExperimentState.FAILED: frozenset(),
}


def check_trial_transition(current: str, target: TrialState) -> None:
    """Raise Conflict unless a trial in `current` may move to `target`."""
    if target not in TRIAL_TRANSITIONS[TrialState(current)]:
        raise Conflict(f"trial is {current}, it cannot become {target}")


def check_experiment_transition(current: str, target: ExperimentState) -> None:
    """Raise Conflict unless an experiment in `current` may move to `target`."""
    if target not in EXPERIMENT_TRANSITIONS[ExperimentState(current)]:
        raise Conflict(f"experiment is {current}, it cannot become {target}")
