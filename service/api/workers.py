import time
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from sweep.service import attempts, workers
from sweep.service.api.deps import (
    ADMIN,
    DatabaseDep,
    MetricsDep,
    OptimizerDep,
    Runner,
    SessionDep,
    SettingsDep,
    WorkerId,
)
from sweep.service.schemas import Assignment, ClaimRequest, WorkerRead, WorkerRegister

router = APIRouter(prefix="/workers", tags=["worker protocol"])


@router.post("", status_code=status.HTTP_201_CREATED)
def register_worker(body: WorkerRegister, session: SessionDep, caller: Runner) -> WorkerRead:
    """Register a worker process; its id goes with every claim."""
    return workers.register(session, body=body, project=caller.project)


@router.get("", tags=["workers"], dependencies=[ADMIN])
def list_workers(
    session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[WorkerRead]:
    """Registered workers, most recently seen first."""
    return workers.recent(session, limit=limit)


@router.post(
    "/{worker_id}/claim",
    response_model=Assignment,
    responses={204: {"description": "no trial could start within wait_seconds"}},
)
async def claim_trial(
    worker_id: WorkerId,
    body: ClaimRequest,
    request: Request,
    caller: Runner,
    db: DatabaseDep,
    optimizer: OptimizerDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> Assignment | Response:
    """Start the next trial, waiting up to wait_seconds for one to become available."""
    deadline = time.monotonic() + min(body.wait_seconds, settings.max_claim_wait_seconds)
    look_first = False  # the first attempt goes straight for the lock; re-polls peek first
    while True:
        generation = db.changes.generation
        attempt = partial(
            attempts.try_claim,
            db,
            optimizer,
            worker_id=worker_id,
            experiment_id=body.experiment_id,
            project=caller.project,
            lease_seconds=settings.lease_seconds,
            look_first=look_first,
        )
        with metrics.claim_seconds.time():
            assignment = await run_in_threadpool(attempt)
        remaining = deadline - time.monotonic()
        if assignment is not None:
            metrics.claims.labels("trial").inc()
            return assignment
        if remaining > 0:
            await db.changes.wait(generation, min(remaining, settings.claim_poll_seconds))
            look_first = True
        # Out of time, or the worker went away: hand it nothing.
        if remaining <= 0 or await request.is_disconnected():
            metrics.claims.labels("none").inc()
            return Response(status_code=status.HTTP_204_NO_CONTENT)
