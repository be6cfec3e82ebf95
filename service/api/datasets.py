from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response, status

from sweep.service import datasets, uploads
from sweep.service.api import contract
from sweep.service.api.deps import (
    ANY_TOKEN,
    CallerDep,
    Controller,
    DatabaseDep,
    DatasetBody,
    Reader,
    SessionDep,
    SettingsDep,
    StoreDep,
)
from sweep.service.schemas import DatasetRead

router = APIRouter(prefix="/datasets", tags=["datasets"])

# Not "." or "..": a name starts with a letter, a digit, "_" or "-" (a URL path keeps it).
DatasetName = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")]
Project = Annotated[str | None, Query(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]


@router.put(
    "/{name}",
    status_code=status.HTTP_201_CREATED,
    # The body is read as a stream (sweep.service.api.deps.dataset_body), so declared here.
    openapi_extra={
        "requestBody": {
            "required": True,
            # The bytes of a CSV or an NPZ (`format` says which), whatever the Content-Type.
            "content": {"application/octet-stream": {"schema": contract.BINARY}},
        }
    },
)
async def upload_dataset(
    name: DatasetName,
    data: DatasetBody,
    db: DatabaseDep,
    store: StoreDep,
    caller: Controller,
    format: Literal["csv", "npz"] = "csv",
    target: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    task: Literal["classification", "binary", "regression"] | None = None,
    project: Project = None,
) -> DatasetRead:
    """Upload a CSV (with `target`, the column to predict) or an NPZ (arrays X and y) as a
    dataset specs of the project can name. The task is inferred from the target unless
    given. Uploading the same data again is harmless; other data under a taken name is 409."""
    return await uploads.dataset(
        db,
        store,
        data,
        project=caller.project_for(project),
        name=name,
        file_format=format,
        target=target,
        task=task,
    )


@router.get("")
def list_datasets(session: SessionDep, caller: Reader) -> list[DatasetRead]:
    """The datasets of the caller's project (an admin's: every project's)."""
    return datasets.listing(session, caller.project)


@router.get("/{name}")
def get_dataset(
    name: DatasetName, session: SessionDep, caller: Reader, project: Project = None
) -> DatasetRead:
    return datasets.describe(session, caller.project or project or "default", name)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(
    name: DatasetName, session: SessionDep, caller: Controller, project: Project = None
) -> Response:
    """Delete a dataset that no running or paused experiment uses (409 otherwise)."""
    datasets.delete(session, caller.project_for(project), name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/content/{sha256}",
    dependencies=[ANY_TOKEN],
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}, **contract.REDIRECT},
)
def dataset_content(
    sha256: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")],
    session: SessionDep,
    caller: CallerDep,
    store: StoreDep,
    settings: SettingsDep,
    direct: Annotated[
        bool, Query(description="307 to a pre-signed URL where the store has them")
    ] = False,
) -> Response:
    """A dataset's arrays (NPZ with X and y) by content hash, as workers fetch and cache it."""
    artifact = datasets.content(session, sha256, caller.project)
    seconds = settings.presign_seconds if direct else None
    return uploads.download(
        store, artifact, media_type="application/octet-stream", direct_seconds=seconds
    )
