"""The experiment as an Optuna study, for clients to rebuild (`SweepClient.to_optuna_study`)
or write to any Optuna storage (`sweep export`): every trial as the service's in-memory study
holds it — params with their distributions, values, intermediate values (the objective per
epoch), state — with the times and ids that SQL keeps."""

from __future__ import annotations

from optuna.distributions import distribution_to_json
from sqlalchemy import select
from sqlalchemy.orm import Session

from service import specs
from service.optimizer import Optimizer
from service.schemas import OptunaStudy, OptunaTrial
from service.tables import Experiment, Trial


def study(session: Session, optimizer: Optimizer, experiment: Experiment) -> OptunaStudy:
    rows = {
        t.number: t
        for t in session.scalars(
            select(Trial).where(Trial.experiment_id == experiment.id, Trial.number.is_not(None))
        )
    }
    objectives = specs.objectives(experiment.spec)
    trials = []
    for frozen in optimizer.history(session, experiment):
        row = rows[frozen.number]
        trials.append(
            OptunaTrial(
                number=frozen.number,
                state=frozen.state.name,
                params=frozen.params,
                distributions={
                    name: distribution_to_json(d) for name, d in frozen.distributions.items()
                },
                values=frozen.values,
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
