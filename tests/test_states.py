"""The state machines as pure tables: what may follow what, and that an end is an end."""

from __future__ import annotations

import pytest

from sweep.service.errors import Conflict
from sweep.service.states import (
    ENDED_EXPERIMENT_STATES,
    EXPERIMENT_TRANSITIONS,
    FINISHED_TRIAL_STATES,
    TRIAL_TRANSITIONS,
    ExperimentState,
    TrialState,
    check_experiment_transition,
    check_trial_transition,
)


def test_every_state_has_a_row() -> None:
    assert set(TRIAL_TRANSITIONS) == set(TrialState)
    assert set(EXPERIMENT_TRANSITIONS) == set(ExperimentState)


@pytest.mark.parametrize("state", sorted(FINISHED_TRIAL_STATES))
def test_a_finished_trial_is_immutable(state: TrialState) -> None:
    assert TRIAL_TRANSITIONS[state] == frozenset()
    for target in TrialState:
        with pytest.raises(Conflict):
            check_trial_transition(state, target)


def test_trial_edges() -> None:
    check_trial_transition("running", TrialState.COMPLETED)
    check_trial_transition("running", TrialState.QUEUED)  # lease lost or released
    check_trial_transition("queued", TrialState.RUNNING)  # the next attempt
    check_trial_transition("queued", TrialState.CANCELLED)
    for target in (TrialState.COMPLETED, TrialState.PRUNED, TrialState.FAILED):
        with pytest.raises(Conflict):
            check_trial_transition("queued", target)  # only a running attempt finishes


@pytest.mark.parametrize("state", sorted(ENDED_EXPERIMENT_STATES))
def test_an_ended_experiment_stays_ended(state: ExperimentState) -> None:
    for target in ExperimentState:
        with pytest.raises(Conflict):
            check_experiment_transition(state, target)


def test_experiment_edges() -> None:
    check_experiment_transition("running", ExperimentState.PAUSED)
    check_experiment_transition("paused", ExperimentState.RUNNING)
    check_experiment_transition("paused", ExperimentState.CANCELLED)
    check_experiment_transition("running", ExperimentState.FAILED)
    with pytest.raises(Conflict):
        check_experiment_transition("running", ExperimentState.RUNNING)
