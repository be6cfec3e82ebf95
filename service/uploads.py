"""Uploads streamed into the artifact store, and downloads streamed out of it.

An upload is checked three times: before a byte is read (does the attempt still run: a stale
one is refused before it sends gigabytes), as it arrives (size cap), and once whole (its
length against Content-Length, its sha256 against the one the sender declared). Only then is
it put in the store under a new key, and only after that does a short transaction record it,
checking the attempt again (fencing): an upload that fails at any step changes nothing, and
a reader never finds a row whose object is missing. No transaction is open while bytes flow,
and the API process never holds more than a chunk of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from sweep.models import arrays
from sweep.service import artifacts, attempts, datasets
from sweep.service.artifacts import Kind
from sweep.service.auth import Caller
from sweep.service.db import Database
from sweep.service.errors import InvalidSpec, NotFound, SweepError, TooLarge
from sweep.service.schemas import DatasetRead, DirectCommitIn, DirectUploadIn, DirectUploadOut
from sweep.service.store import CHUNK, Incoming, Store, Stored, chunks, sha256_of
from sweep.service.tables import Artifact

T = TypeVar("T")


async def receive(
    request: Request, store: Store, *, limit: int, sha256: str | None
) -> tuple[Incoming, Stored]:
    """The request body in a file of the store's staging area, whole and as declared."""
    incoming = Incoming(store.staging())
    try:
        buffer = bytearray()
        async for chunk in request.stream():
            buffer += chunk
            if incoming.size + len(buffer) > limit:
                raise TooLarge(f"upload exceeds {limit} bytes (SWEEP_MAX_ARTIFACT_BYTES)")
            if len(buffer) >= CHUNK:
                await run_in_threadpool(incoming.write, bytes(buffer))
                buffer.clear()
        incoming.write(bytes(buffer))
        stored = await run_in_threadpool(incoming.finish)
        _check_whole(request, stored, sha256)
    except ClientDisconnect:
        incoming.discard()
        raise SweepError("the upload ended before its last byte; nothing was stored") from None
    except BaseException:
        incoming.discard()
        raise
    return incoming, stored


def _check_whole(request: Request, stored: Stored, sha256: str | None) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) != stored.size:
        raise InvalidSpec(
            f"truncated upload: {stored.size} of the {declared} bytes declared arrived",
            field="body",
        )
    if stored.size == 0:
        raise InvalidSpec("the upload is empty", field="body")
    if sha256 is not None and sha256.lower() != stored.sha256:
        raise InvalidSpec(
            f"the upload's sha256 is {stored.sha256}, not {sha256.lower()} as declared: "
            "it was corrupted or truncated on the way",
            field="X-Content-SHA256",
        )


async def trial_artifact(
    request: Request,
    *,
    db: Database,
    store: Store,
    limit: int,
    caller: Caller,
    trial_id: int,
    token: str,
    kind: Kind,
    sha256: str,
    epoch: int | None = None,
) -> None:
    """Receive a running attempt's weights, checkpoint or outputs and record them."""

    def check(session: Session) -> str:
        trial = attempts.uploading(session, caller, trial_id, token, kind, epoch)
        return artifacts.new_key(kind, trial=trial)

    key = await _in_transaction(db, check, write=False)
    incoming, stored = await receive(request, store, limit=limit, sha256=sha256)
    if kind == "outputs" and not incoming.head.startswith(b"\x1f\x8b"):
        incoming.discard()
        raise InvalidSpec("outputs must be a gzipped tar file", field="body")

    def record(session: Session) -> None:
        attempts.store_artifact(
            session, trial_id=trial_id, token=token, kind=kind, key=key, stored=stored, epoch=epoch
        )

    await _keep(db, store, key, incoming, record)


async def dataset(
    db: Database,
    store: Store,
    data: bytes,
    *,
    project: str,
    name: str,
    file_format: str,
    target: str | None,
    task: str | None,
) -> DatasetRead:
    """Validate an uploaded dataset, put its arrays in the store, and record it."""
    parsed = await run_in_threadpool(
        datasets.parse, data, name=name, file_format=file_format, target=target, task=task
    )
    incoming = Incoming(store.staging())
    try:
        await run_in_threadpool(incoming.write, arrays.to_npz(parsed.X, parsed.y))
        stored = await run_in_threadpool(incoming.finish)
    except BaseException:
        incoming.discard()
        raise
    key = artifacts.new_key("dataset", name=name)

    def record(session: Session) -> DatasetRead:
        return datasets.record(session, parsed, project=project, name=name, key=key, stored=stored)

    return await _keep(db, store, key, incoming, record)


async def _keep(
    db: Database, store: Store, key: str, incoming: Incoming, record: Callable[[Session], T]
) -> T:
    """Put a received file in the store under `key`, then record it; undone if recording
    fails (the attempt went stale meanwhile, the database is down)."""
    try:
        await run_in_threadpool(store.put_file, key, incoming.path)
    finally:
        incoming.discard()
    try:
        return await _in_transaction(db, record)
    except BaseException:
        await run_in_threadpool(store.delete, key)
        raise


async def _in_transaction(db: Database, work: Callable[[Session], T], *, write: bool = True) -> T:
    def run() -> T:
        with db.transaction(write=write) as session:
            return work(session)

    return await run_in_threadpool(run)


def download(
    store: Store,
    artifact: Artifact,
    *,
    media_type: str,
    filename: str | None = None,
    direct_seconds: int | None = None,
) -> Response:
    """An artifact streamed from the store, with its size and sha256 for the receiver to
    check. The object is opened here, so a replacement committed meanwhile does not cut the
    download short. With `direct_seconds`, a store that has pre-signed URLs answers 307 to
    one instead (the sha256 is in that answer's headers)."""
    headers = {"X-Content-SHA256": artifact.sha256, "ETag": f'"{artifact.sha256}"'}
    if direct_seconds is not None:
        url = store.presigned_get(artifact.key, direct_seconds)
        if url is not None:
            return Response(status_code=307, headers={**headers, "Location": url})
    headers["Content-Length"] = str(artifact.size)
    if filename:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    try:
        stream = store.open(artifact.key)
    except FileNotFoundError:
        raise NotFound(
            f"the {artifact.kind} object {artifact.key} is missing from the artifact store"
        ) from None
    return StreamingResponse(chunks(stream), media_type=media_type, headers=headers)


# --- straight to the store (S3: pre-signed URLs) ---------------------------------------------


def offer(
    session: Session,
    store: Store,
    *,
    caller: Caller,
    trial_id: int,
    token: str,
    body: DirectUploadIn,
    limit: int,
    seconds: int,
) -> DirectUploadOut:
    """A URL the worker PUTs the artifact to itself, when the store has such URLs."""
    if body.size > limit:
        raise TooLarge(f"upload exceeds {limit} bytes (SWEEP_MAX_ARTIFACT_BYTES)", field="size")
    trial = attempts.uploading(session, caller, trial_id, token, body.kind, body.epoch)
    key = artifacts.new_key(body.kind, trial=trial)
    presigned = store.presigned_put(key, seconds, body.sha256)
    if presigned is None:
        return DirectUploadOut()
    url, headers = presigned
    return DirectUploadOut(url=url, key=key, headers=headers)


async def commit(
    *, db: Database, store: Store, caller: Caller, trial_id: int, token: str, body: DirectCommitIn
) -> None:
    """Record an artifact the worker put in the store itself, once the store shows it whole:
    its size, and its sha256 (the store's own where it computed one, else read back here)."""

    def check(session: Session) -> None:
        trial = attempts.uploading(session, caller, trial_id, token, body.kind, body.epoch)
        if not body.key.startswith(artifacts.attempt_prefix(trial, body.kind)):
            raise InvalidSpec("the key is not one offered to this attempt", field="key")

    await _in_transaction(db, check, write=False)
    size = await run_in_threadpool(store.size, body.key)
    if size is None:
        raise InvalidSpec(f"nothing is stored under {body.key}: PUT it first", field="key")
    try:
        if size != body.size:
            raise InvalidSpec(
                f"truncated upload: the store holds {size} of {body.size} bytes", field="size"
            )
        found = await run_in_threadpool(_stored_sha256, store, body.key)
        if found != body.sha256:
            raise InvalidSpec(
                f"the stored object's sha256 is {found}, not {body.sha256}", field="sha256"
            )
        stored = Stored(size, found)

        def record(session: Session) -> None:
            attempts.store_artifact(
                session,
                trial_id=trial_id,
                token=token,
                kind=body.kind,
                key=body.key,
                stored=stored,
                epoch=body.epoch,
            )

        await _in_transaction(db, record)
    except BaseException:
        await run_in_threadpool(store.delete, body.key)
        raise


def _stored_sha256(store: Store, key: str) -> str:
    known = store.checksum(key)
    if known is not None:
        return known
    with store.open(key) as stream:
        return sha256_of(stream).sha256
