from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from sweep.service import attempts, trials, uploads
from sweep.service.api import contract
from sweep.service.api.deps import (
    READ,
    RUN,
    AttemptToken,
    ContentSha256,
    DatabaseDep,
    Runner,
    ServicesDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    TrialDep,
    TrialId,
    VisibleTrialId,
)
from sweep.service.schemas import (
    CompleteIn,
    DirectCommitIn,
    DirectUploadIn,
    DirectUploadOut,
    FailIn,
    HeartbeatOut,
    ReleaseIn,
    ReportIn,
    ReportOut,
    TrialDetail,
    TrialRead,
)

router = APIRouter(prefix="/trials", tags=["trials"])

# A store with pre-signed URLs answers 307 to one; the others stream the bytes.
Direct = Annotated[bool, Query(description="307 to a pre-signed URL where the store has them")]

# Uploads are read as a stream, so their body is declared here rather than by a parameter.
UPLOAD = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.get("/{trial_id}", dependencies=[READ])
def get_trial(trial: TrialDep, session: SessionDep) -> TrialDetail:
    """A trial's params, full config, state and per-epoch metrics."""
    return trials.detail(session, trial)


@router.get(
    "/{trial_id}/model",
    dependencies=[READ],
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}, **contract.REDIRECT},
)
def get_model(
    trial: TrialDep,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    direct: Direct = False,
) -> Response:
    """The trial's model file: the built-in trainer's model bundle (`sweep.load_model(f)`,
    or `torch.load(f, weights_only=True)["state_dict"]`), or what its program saved; its
    sha256 is in X-Content-SHA256."""
    return uploads.download(
        store,
        trials.weights(session, trial),
        media_type="application/octet-stream",
        filename=f"trial-{trial.id}.pt",
        direct_seconds=settings.presign_seconds if direct else None,
    )


@router.get(
    "/{trial_id}/outputs",
    dependencies=[READ],
    response_class=Response,
    responses={
        200: {"content": {"application/gzip": {"schema": contract.BINARY}}},
        **contract.REDIRECT,
    },
)
def get_outputs(
    trial: TrialDep,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    direct: Direct = False,
) -> Response:
    """The files the trial's program left in SWEEP_OUTPUT_DIR, as a gzipped tar."""
    return uploads.download(
        store,
        trials.outputs(session, trial),
        media_type="application/gzip",
        filename=f"trial-{trial.id}-outputs.tar.gz",
        direct_seconds=settings.presign_seconds if direct else None,
    )


@router.put("/{trial_id}/outputs", status_code=204, tags=["worker protocol"], openapi_extra=UPLOAD)
async def upload_outputs(
    trial_id: TrialId,
    token: AttemptToken,
    sha256: ContentSha256,
    request: Request,
    caller: Runner,
    db: DatabaseDep,
    store: StoreDep,
    settings: SettingsDep,
) -> Response:
    """Store the files a running trial's program left (a gzipped tar), replacing earlier ones."""
    await uploads.trial_artifact(
        request,
        db=db,
        store=store,
        limit=settings.max_artifact_bytes,
        caller=caller,
        trial_id=trial_id,
        token=token,
        kind="outputs",
        sha256=sha256,
    )
    return Response(status_code=204)


@router.post("/{trial_id}/reports", tags=["worker protocol"])
async def report_epoch(
    trial_id: TrialId,
    token: AttemptToken,
    body: ReportIn,
    caller: Runner,
    services: ServicesDep,
) -> ReportOut:
    """Record an epoch's metrics; the answer says continue, prune or stop."""
    report = partial(
        attempts.report,
        optimizer=services.optimizer,
        trial_id=trial_id,
        token=token,
        body=body,
        lease_seconds=services.settings.lease_seconds,
        project=caller.project,
    )
    answer = await services.transaction.run(report)
    services.metrics.reports.labels(answer.action).inc()
    return answer


@router.post("/{trial_id}/heartbeat", tags=["worker protocol"])
async def heartbeat(
    trial_id: TrialId,
    token: AttemptToken,
    caller: Runner,
    services: ServicesDep,
) -> HeartbeatOut:
    """Keep the attempt's lease alive between reports."""
    beat = partial(
        attempts.heartbeat,
        trial_id=trial_id,
        token=token,
        lease_seconds=services.settings.lease_seconds,
        project=caller.project,
    )
    return await services.transaction.run(beat)


@router.post("/{trial_id}/release", tags=["worker protocol"], dependencies=[RUN])
def release(
    trial_id: VisibleTrialId,
    token: AttemptToken,
    session: SessionDep,
    body: ReleaseIn | None = None,
) -> TrialRead:
    """Give the trial back (the worker is shutting down, or the trial's program was killed):
    it is queued for another attempt."""
    return attempts.release(session, trial_id=trial_id, token=token, body=body or ReleaseIn())


@router.put(
    "/{trial_id}/checkpoint", status_code=204, tags=["worker protocol"], openapi_extra=UPLOAD
)
async def upload_checkpoint(
    trial_id: TrialId,
    token: AttemptToken,
    epoch: Annotated[int, Query(ge=1, le=1_000_000)],
    sha256: ContentSha256,
    request: Request,
    caller: Runner,
    db: DatabaseDep,
    store: StoreDep,
    settings: SettingsDep,
) -> Response:
    """Keep the attempt's checkpoint taken after `epoch` (opaque bytes from the worker). It is
    used only once whole and checked; until then the previous one stays."""
    await uploads.trial_artifact(
        request,
        db=db,
        store=store,
        limit=settings.max_artifact_bytes,
        caller=caller,
        trial_id=trial_id,
        token=token,
        kind="checkpoint",
        sha256=sha256,
        epoch=epoch,
    )
    return Response(status_code=204)


@router.get(
    "/{trial_id}/checkpoint",
    tags=["worker protocol"],
    dependencies=[RUN],
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        409: {"description": "the attempt is no longer the trial's running one"},
        **contract.REDIRECT,
    },
)
def download_checkpoint(
    trial_id: VisibleTrialId,
    token: AttemptToken,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    direct: Direct = False,
) -> Response:
    """The checkpoint a new attempt resumes from; its epoch is in X-Checkpoint-Epoch."""
    checkpoint = attempts.load_checkpoint(session, trial_id=trial_id, token=token)
    response = uploads.download(
        store,
        checkpoint,
        media_type="application/octet-stream",
        direct_seconds=settings.presign_seconds if direct else None,
    )
    response.headers["X-Checkpoint-Epoch"] = str(checkpoint.epoch)
    return response


@router.put("/{trial_id}/weights", status_code=204, tags=["worker protocol"], openapi_extra=UPLOAD)
async def upload_weights(
    trial_id: TrialId,
    token: AttemptToken,
    sha256: ContentSha256,
    request: Request,
    caller: Runner,
    db: DatabaseDep,
    store: StoreDep,
    settings: SettingsDep,
) -> Response:
    """Store a running trial's model file (the built-in trainer's model bundle, or what a
    program saved), replacing earlier ones; streamed to the artifact store, and kept only once
    whole and checked."""
    await uploads.trial_artifact(
        request,
        db=db,
        store=store,
        limit=settings.max_artifact_bytes,
        caller=caller,
        trial_id=trial_id,
        token=token,
        kind="weights",
        sha256=sha256,
    )
    return Response(status_code=204)


@router.post("/{trial_id}/uploads", tags=["worker protocol"])
def offer_upload(
    trial_id: TrialId,
    token: AttemptToken,
    body: DirectUploadIn,
    session: SessionDep,
    caller: Runner,
    store: StoreDep,
    settings: SettingsDep,
) -> DirectUploadOut:
    """Where a running attempt may PUT an artifact straight into the store (S3: a pre-signed
    URL), to commit afterwards; without a URL, PUT it through the API."""
    return uploads.offer(
        session,
        store,
        caller=caller,
        trial_id=trial_id,
        token=token,
        body=body,
        limit=settings.max_artifact_bytes,
        seconds=settings.presign_seconds,
    )


@router.post("/{trial_id}/uploads/commit", status_code=204, tags=["worker protocol"])
async def commit_upload(
    trial_id: TrialId,
    token: AttemptToken,
    body: DirectCommitIn,
    caller: Runner,
    db: DatabaseDep,
    store: StoreDep,
) -> Response:
    """Keep an artifact PUT straight into the store, once its size and sha256 check out."""
    await uploads.commit(
        db=db, store=store, caller=caller, trial_id=trial_id, token=token, body=body
    )
    return Response(status_code=204)


@router.post("/{trial_id}/complete", tags=["worker protocol"])
async def complete_trial(
    trial_id: TrialId,
    token: AttemptToken,
    body: CompleteIn,
    caller: Runner,
    services: ServicesDep,
) -> TrialRead:
    """Finish a trial with its objective value."""
    complete = partial(
        attempts.complete, trial_id=trial_id, token=token, body=body, project=caller.project
    )
    return await services.transaction.run(complete)


@router.post("/{trial_id}/fail", tags=["worker protocol"], dependencies=[RUN])
def fail_trial(
    trial_id: VisibleTrialId, token: AttemptToken, body: FailIn, session: SessionDep
) -> TrialRead:
    """End a trial as failed: diverged, error (with its text) or interrupted."""
    return attempts.fail(session, trial_id=trial_id, token=token, body=body)
