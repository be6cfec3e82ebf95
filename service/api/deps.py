"""Typed dependencies: the transaction of a request, and "does it exist" written once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Path, Request
from sqlalchemy.orm import Session

from service import experiments, trials
from service.config import Settings
from service.db import Database
from service.optimizer import Optimizer
from service.schemas import MAX_INT
from service.tables import Experiment, Trial


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def get_optimizer(request: Request) -> Optimizer:
    optimizer: Optimizer = request.app.state.optimizer
    return optimizer


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


DatabaseDep = Annotated[Database, Depends(get_db)]
OptimizerDep = Annotated[Optimizer, Depends(get_optimizer)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(request: Request, db: DatabaseDep) -> Iterator[Session]:
    """The request's one transaction: read-only for GET, committed before the response."""
    with db.transaction(write=request.method != "GET") as session:
        yield session


# scope="function": the transaction commits before the response is sent, so a client never
# sees a success that was not stored.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


# Ids past the columns' range are refused as invalid input rather than looked up.
ExperimentId = Annotated[int, Path(ge=1, le=MAX_INT)]
TrialId = Annotated[int, Path(ge=1, le=MAX_INT)]
WorkerId = Annotated[int, Path(ge=1, le=MAX_INT)]


# The attempt a worker's call is about (from its claim); a stale one is refused with 409.
AttemptToken = Annotated[str, Header(alias="X-Attempt-Token", min_length=1, max_length=64)]


def experiment_or_404(experiment_id: ExperimentId, session: SessionDep) -> Experiment:
    return experiments.get(session, experiment_id)


def trial_or_404(trial_id: TrialId, session: SessionDep) -> Trial:
    return trials.get(session, trial_id)


ExperimentDep = Annotated[Experiment, Depends(experiment_or_404)]
TrialDep = Annotated[Trial, Depends(trial_or_404)]
