import asyncio
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from sweep.service import attempts, claims, workers
from sweep.service.api.deps import (
    ADMIN,
    Runner,
    ServicesDep,
    SessionDep,
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
    services: ServicesDep,
) -> Assignment | Response:
    """Start the next trial, waiting up to wait_seconds for one to become available."""
    db, watcher, metrics = services.db, services.watcher, services.metrics
    settings = services.settings
    wait = min(body.wait_seconds, settings.max_claim_wait_seconds)
    generation = db.changes.generation
    assignment = None
    # A long wait goes straight to the watcher, which checks it, when the service is quiet
    # or others wait or look already; else (and always when it frees the slots of trials it
    # is finishing) the claim tries on its own first.
    checked = bool(body.finishing) or not watcher.may_join_unchecked(wait, generation)
    if checked:
        attempt = partial(
            attempts.try_claim,
            db,
            services.optimizer,
            worker_id=worker_id,
            experiment_id=body.experiment_id,
            project=caller.project,
            lease_seconds=settings.lease_seconds,
            finishing=body.finishing,
            # Look first where the watcher's last round found no work anywhere, else
            # straight for the lock.
            look_first=watcher.quiet(generation),
        )
        with metrics.claim_seconds.time(), watcher.alone():
            assignment = await run_in_threadpool(attempt)
    if assignment is None and wait > 0:
        if db.changes.generation != generation:  # work may have come meanwhile: look again
            db.changes.notify()
        gone = asyncio.ensure_future(claims.until_gone(request.receive))
        try:
            assignment = await watcher.wait(
                worker_id,
                experiment_id=body.experiment_id,
                project=caller.project,
                timeout=wait,
                gone=gone,
                checked=checked,
            )
        finally:
            gone.cancel()
    if assignment is None:
        metrics.claims.labels("none").inc()
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    metrics.claims.labels("trial").inc()
    return assignment
