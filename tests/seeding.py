"""A large finished experiment written straight into SQL, for tests of what reads thousands
of trials (the dashboard at 10,000): training that many through workers would take hours.

The experiment itself is submitted over HTTP, so its spec is what the service accepted; the
trials and their metrics are the rows the service writes when workers report and finish,
with params drawn from the spec's own search space."""

from __future__ import annotations

import math
import random
from datetime import timedelta
from typing import Any

from sqlalchemy import create_engine, insert, select, update

from sweep.service.states import ExperimentState, TrialState
from sweep.service.tables import Experiment, Trial, TrialMetric, utcnow

SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "hidden_units": {"type": "int", "low": 32, "high": 256, "log": True},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam", "adamw"]},
}


def draw(space: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, p in space.items():
        if p["type"] == "categorical":
            params[name] = rng.choice(p["choices"])
        elif p.get("log"):
            x = math.exp(rng.uniform(math.log(p["low"]), math.log(p["high"])))
            params[name] = round(x) if p["type"] == "int" else x
        else:
            x = rng.uniform(p["low"], p["high"])
            params[name] = round(x) if p["type"] == "int" else x
    return params


def finished_trials(
    database_url: str, experiment_id: int, n_trials: int, epochs: int, seed: int = 0
) -> None:
    """Add `n_trials` finished trials of `epochs` epochs each (a tenth of them pruned half
    way) to the experiment, which then ends completed: what a finished sweep leaves."""
    rng = random.Random(seed)
    engine = create_engine(database_url)
    start = utcnow() - timedelta(seconds=n_trials)
    with engine.begin() as connection:
        spec = connection.execute(
            select(Experiment.spec).where(Experiment.id == experiment_id)
        ).scalar_one()
        trials, metrics = [], []
        best: tuple[float, int] | None = None
        for number in range(n_trials):
            params = draw(spec["search_space"], rng)
            pruned = number % 10 == 9
            ran = epochs // 2 if pruned else epochs
            skill = rng.uniform(0.6, 0.98)
            curve = [skill * (1 - math.exp(-(e + 1) / 4)) for e in range(ran)]
            value = max(curve)
            if not pruned and (best is None or value > best[0]):
                best = (value, number)
            began = start + timedelta(seconds=number)
            trials.append(
                {
                    "experiment_id": experiment_id,
                    "number": number,
                    "state": TrialState.PRUNED if pruned else TrialState.COMPLETED,
                    "params": params,
                    "system_attrs": {},
                    "value": value,
                    "values": [value],
                    "best_epoch": curve.index(value) + 1,
                    "last_epoch": ran,
                    "last_objective": curve[-1],
                    "finish_seq": number + 1,
                    "attempt": 1,
                    "retries": 0,
                    "resumed_from": 0,
                    "has_weights": False,
                    "has_outputs": False,
                    "created_at": began,
                    "updated_at": began + timedelta(seconds=0.9),
                    "started_at": began,
                    "finished_at": began + timedelta(seconds=0.9),
                }
            )
            metrics.append(curve)
        connection.execute(insert(Trial), trials)
        ids = dict(
            connection.execute(
                select(Trial.number, Trial.id).where(Trial.experiment_id == experiment_id)
            ).all()
        )
        rows = [
            {
                "trial_id": ids[number],
                "epoch": epoch,
                "objective": value,
                "values": {
                    "val_accuracy": value,
                    "val_loss": 2.3 * (1 - value),
                    "train_loss": 2.2 * (1 - value) + 0.01,
                    "lr": trials[number]["params"]["lr"] * (1 - epoch / (epochs + 1)),
                },
                "created_at": trials[number]["started_at"],
            }
            for number, curve in enumerate(metrics)
            for epoch, value in enumerate(curve, start=1)
        ]
        for i in range(0, len(rows), 20_000):
            connection.execute(insert(TrialMetric), rows[i : i + 20_000])
        assert best is not None
        connection.execute(
            update(Experiment)
            .where(Experiment.id == experiment_id)
            .values(
                state=ExperimentState.COMPLETED,
                n_trials=n_trials,
                trial_count=n_trials,
                finish_seq=n_trials,
                best_value=best[0],
                best_trial_number=best[1],
                best_trial_id=ids[best[1]],
                finished_at=utcnow(),
            )
        )
    engine.dispose()
