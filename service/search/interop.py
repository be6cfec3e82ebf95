"""The experiment as an Optuna study, for clients to rebuild (`SweepClient.to_optuna_study`)
or write to any Optuna storage (`sweep export`): every trial as the service's in-memory study
holds it — params with their distributions, values, intermediate values (the objective per
epoch), state — with the times and ids that SQL keeps."""

from __future__ import annotations

from optuna.distributions import distribution_to_json
from sqlalchemy import select
from sqlalchemy.orm import Session

from sweep.service import specs
from sweep.service.schemas import OptunaStudy, OptunaTrial
from sweep.service.search.optimizer import Optimizer
from sweep.service.tables import Experiment, Trial


def study(session: Session, optimizer: Optimizer, experiment: Experiment) -> OptunaStudy:
    # The study first: it may hold a trial whose claim has not committed yet, which the rows
    # read after it do not have, and which is left out.
    history = optimizer.history(session, experiment)
    rows = {
        t.number: t
        for t in session.scalars(
            select(Trial).where(Trial.experiment_id == experiment.id, Trial.number.is_not(None))
        )
    }
    objectives = specs.objectives(experiment.spec)
    trials = []
    for frozen in history:
        row = rows.get(frozen.number)
        if row is None:
            continue
        # An out-of-memory trial is an infeasible point for the service's sampler (a COMPLETE
        # trial with a stand-in value and a constraint); elsewhere it is a failure.
        oom = row.failure_reason == "oom"
        trials.append(
            OptunaTrial(
                number=frozen.number,
                state="FAIL" if oom else frozen.state.name,
                params=frozen.params,
                distributions={
                    name: distribution_to_json(d) for name, d in frozen.distributions.items()
                },
                values=None if oom else frozen.values,
                intermediate_values={str(k): v for k, v in frozen.intermediate_values.items()},
                # Trials that came in finished (warm start) never started here.
                datetime_start=row.started_at or row.created_at,
                datetime_complete=row.finished_at,
                user_attrs={
                    "sweep_trial_id": row.id,
                    "sweep_state": row.state,
                    "worker_id": row.worker_id,
                    "best_epoch": row.best_epoch,
                    "failure_reason": row.failure_reason,
                },
            )
        )
    return OptunaStudy(
        study_name=f"{experiment.name}-{experiment.id}",
        directions=[o["direction"] for o in objectives],
        metric_names=[o["metric"] for o in objectives],
        trials=trials,
    )
