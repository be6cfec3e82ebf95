"""Datasets users upload: a CSV with a target column, or an NPZ with arrays X and y.

An upload is checked before anything is stored (shape, numbers only, nothing missing or
infinite, classes with enough samples for a stratified split, size), then kept as arrays (an
NPZ) in the artifact store: the same data uploaded twice is stored once, and workers cache it
by the hash of the arrays. Specs name a dataset of their project by its name.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from sweep.models import arrays, catalog
from sweep.service import artifacts
from sweep.service.errors import Conflict, InvalidSpec, NotFound
from sweep.service.schemas import DatasetRead
from sweep.service.specs import Uploaded
from sweep.service.states import ExperimentState
from sweep.service.store import Stored
from sweep.service.tables import Artifact, Experiment, UserDataset

MIN_SAMPLES = 10
MAX_SAMPLES = 10_000_000
MAX_FEATURES = 100_000
MAX_CLASSES = 1_000
# An NPZ may be compressed: what it unpacks to is checked before it is unpacked.
MAX_UNPACKED_BYTES = 4 * 2**30
# Whole numbers with at most this many distinct values are class labels, unless told otherwise.
MAX_INFERRED_CLASSES = 100


@dataclass(frozen=True)
class Parsed:
    """An upload, checked and turned into arrays: what `record` keeps."""

    X: np.ndarray
    y: np.ndarray
    task: str
    classes: list[Any] | None
    sha256: str  # of the arrays (arrays.content_hash)
    file_format: str
    target: str | None
    size: int  # bytes uploaded


def parse(
    data: bytes, *, name: str, file_format: str, target: str | None, task: str | None
) -> Parsed:
    """Validate an upload (no database needed: this runs before anything is stored)."""
    if name in catalog.datasets():
        raise Conflict(f"{name!r} is a bundled dataset; choose another name")
    if file_format == "csv":
        if not target:
            raise InvalidSpec("a CSV needs target=COLUMN, the column to predict", field="target")
        X, labels = _parse_csv(data, target)
    else:
        X, labels = _parse_npz(data)
    task = task or _infer_task(labels)
    y, classes = _targets(labels, task)
    _check(X, y, task)
    return Parsed(
        X=X,
        y=y,
        task=task,
        classes=classes,
        sha256=arrays.content_hash(X, y),
        file_format=file_format,
        target=target if file_format == "csv" else None,
        size=len(data),
    )


def record(
    session: Session, parsed: Parsed, *, project: str, name: str, key: str, stored: Stored
) -> DatasetRead:
    """Keep a parsed dataset whose arrays were just put in the store under `key`. Uploading
    the same data under its name again is a no-op; other data under a taken name is a 409.
    Arrays some dataset already holds are shared, and the new object goes."""
    existing = find(session, project, name)
    if existing is not None:
        if existing.sha256 == parsed.sha256 and existing.task == parsed.task:
            artifacts.forget_key(session, key)
            return read(existing)
        raise Conflict(f"dataset {name!r} exists in project {project!r} with other data")
    holder = session.scalars(
        select(UserDataset.artifact_id).where(
            UserDataset.sha256 == parsed.sha256, UserDataset.artifact_id.is_not(None)
        )
    ).first()
    if holder is not None:
        artifacts.forget_key(session, key)
        artifact_id = holder
    else:
        artifact_id = artifacts.add_dataset(session, key, stored).id
    dataset = UserDataset(
        project=project,
        name=name,
        sha256=parsed.sha256,
        artifact_id=artifact_id,
        format=parsed.file_format,
        task=parsed.task,
        n_samples=len(parsed.X),
        n_features=int(np.prod(parsed.X.shape[1:])),
        input_shape=list(parsed.X.shape[1:]),
        classes=parsed.classes,
        target=parsed.target,
        size=parsed.size,
    )
    session.add(dataset)
    session.flush()
    return read(dataset)


def find(session: Session, project: str, name: str) -> UserDataset | None:
    return session.scalars(
        select(UserDataset).where(UserDataset.project == project, UserDataset.name == name)
    ).first()


def get(session: Session, project: str, name: str) -> UserDataset:
    dataset = find(session, project, name)
    if dataset is None:
        raise NotFound(f"no dataset {name!r} in project {project!r}")
    return dataset


def describe(session: Session, project: str, name: str) -> DatasetRead:
    return read(get(session, project, name))


def delete(session: Session, project: str, name: str) -> None:
    """Forget a dataset no running or paused experiment uses; its arrays go with the last
    dataset that holds them."""
    dataset = get(session, project, name)
    users = session.scalars(
        select(Experiment.id).where(
            Experiment.project == project,
            Experiment.state.in_((ExperimentState.RUNNING, ExperimentState.PAUSED)),
            Experiment.spec["dataset"]["sha256"].as_string() == dataset.sha256,
        )
    ).all()
    if users:
        raise Conflict(f"dataset {name!r} is used by experiments {list(users)}, not ended yet")
    session.delete(dataset)
    session.flush()
    artifacts.discard_dataset(session, dataset.artifact_id)


def listing(session: Session, project: str | None) -> list[DatasetRead]:
    query = select(UserDataset).order_by(UserDataset.project, UserDataset.name)
    if project is not None:
        query = query.where(UserDataset.project == project)
    return [read(d) for d in session.scalars(query)]


def content(session: Session, sha256: str, project: str | None) -> Artifact:
    """A dataset's arrays by hash, for a caller that sees a dataset holding them."""
    query = select(Artifact).join(UserDataset, UserDataset.artifact_id == Artifact.id)
    query = query.where(UserDataset.sha256 == sha256)
    if project is not None:
        query = query.where(UserDataset.project == project)
    found = session.scalars(query.limit(1)).first()
    if found is None:
        raise NotFound(f"no dataset with content {sha256}")
    return found


def for_spec(dataset: UserDataset) -> Uploaded:
    """What spec validation needs to know of it, and what workers need to fetch it."""
    task = cast(catalog.Task, dataset.task)
    return Uploaded(
        info=catalog.DatasetInfo(dataset.name, task, image=len(dataset.input_shape) == 3),
        fields={
            "sha256": dataset.sha256,
            "task": task,
            "input_shape": dataset.input_shape,
            "classes": dataset.classes,  # so a trained model predicts the uploaded labels
        },
    )


def read(dataset: UserDataset) -> DatasetRead:
    return DatasetRead.model_validate(dataset, from_attributes=True)


# -------------------------------------------------------------------------------------------
# Parsing and checking


def _parse_csv(data: bytes, target: str) -> tuple[np.ndarray, list[Any]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidSpec(f"the CSV is not UTF-8 text: {exc}", field="body") from exc
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if row]
    except csv.Error as exc:  # a cell over the csv module's field limit, a stray NUL...
        raise InvalidSpec(f"the CSV cannot be read: {exc}", field="body") from exc
    if len(rows) < 2:
        raise InvalidSpec("a CSV needs a header row and at least one data row", field="body")
    header = [h.strip() for h in rows[0]]
    if len(set(header)) != len(header) or "" in header:
        raise InvalidSpec("the header needs distinct, non-empty column names", field="body")
    if target not in header:
        raise InvalidSpec(f"no column {target!r}; columns: {header}", field="target")
    if len(header) < 2:
        raise InvalidSpec("a CSV needs feature columns besides the target", field="body")
    column = header.index(target)
    features, labels = [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise InvalidSpec(
                f"line {line} has {len(row)} values; the header has {len(header)}", field="body"
            )
        values = []
        for i, cell in enumerate(row):
            if i == column:
                labels.append(_label(cell.strip(), line))
            else:
                values.append(_number(cell.strip(), header[i], line))
        features.append(values)
        if len(features) > MAX_SAMPLES:
            raise InvalidSpec(f"more than {MAX_SAMPLES} rows", field="body")
    return np.asarray(features, dtype=np.float32), labels


def _number(cell: str, name: str, line: int) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise InvalidSpec(
            f"column {name!r}, line {line}: {cell!r} is not a number (features must be numeric)",
            field="body",
        ) from None
    if not math.isfinite(value):
        raise InvalidSpec(f"column {name!r}, line {line}: {cell!r} is not finite", field="body")
    return value


def _label(cell: str, line: int) -> Any:
    if cell == "":
        raise InvalidSpec(f"the target is missing on line {line}", field="body")
    try:
        value = float(cell)
    except ValueError:
        return cell  # a class name
    if not math.isfinite(value):
        raise InvalidSpec(f"the target on line {line} is {cell!r}, not finite", field="body")
    return int(value) if value.is_integer() else value


def _parse_npz(data: bytes) -> tuple[np.ndarray, list[Any]]:
    if not zipfile.is_zipfile(io.BytesIO(data)):  # np.load would take it for a pickle
        raise InvalidSpec("not an NPZ file (numpy.savez writes one)", field="body")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        unpacked = sum(member.file_size for member in archive.infolist())
    if unpacked > MAX_UNPACKED_BYTES:
        raise InvalidSpec(
            f"the arrays unpack to more than {MAX_UNPACKED_BYTES} bytes", field="body"
        )
    try:
        X, y = arrays.from_npz(data)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InvalidSpec(f"not an NPZ file: {exc}", field="body") from exc
    except NotImplementedError as exc:  # a compression method zipfile cannot read
        raise InvalidSpec(f"the NPZ cannot be unpacked: {exc}", field="body") from exc
    except RuntimeError as exc:  # an encrypted member
        raise InvalidSpec(f"the NPZ cannot be unpacked: {exc}", field="body") from exc
    except KeyError as exc:
        raise InvalidSpec(f"an NPZ needs arrays X and y; missing {exc}", field="body") from exc
    except ValueError as exc:  # object arrays, which would need unpickling
        raise InvalidSpec(f"X and y must be numeric arrays: {exc}", field="body") from exc
    if X.ndim not in (2, 3, 4) or y.ndim != 1 or len(X) != len(y):
        raise InvalidSpec(
            f"X must be (samples, features) or images (samples, [channels,] height, width) and "
            f"y (samples,); got X {X.shape} and y {y.shape}",
            field="body",
        )
    if X.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
        raise InvalidSpec(f"X and y must be numbers; got {X.dtype} and {y.dtype}", field="body")
    if X.ndim == 3:  # images without a channel axis
        X = X[:, None]
    if not np.isfinite(X).all() or not np.isfinite(y).all():
        raise InvalidSpec("X and y must hold finite numbers (no NaN or infinity)", field="body")
    labels = [int(v) if float(v).is_integer() else float(v) for v in y.tolist()]
    return X.astype(np.float32), labels


def _infer_task(labels: list[Any]) -> str:
    if any(isinstance(v, str) for v in labels):
        return "classification"
    whole = all(isinstance(v, int) for v in labels)
    return "classification" if whole and len(set(labels)) <= MAX_INFERRED_CLASSES else "regression"


def _targets(labels: list[Any], task: str) -> tuple[np.ndarray, list[Any] | None]:
    if task == "regression":
        if any(isinstance(v, str) for v in labels):
            raise InvalidSpec("a regression target must be numeric", field="task")
        return np.asarray(labels, dtype=np.float32), None
    classes = sorted(set(labels), key=lambda v: (isinstance(v, str), v))
    if task == "binary" and len(classes) != 2:
        raise InvalidSpec(f"a binary target has 2 classes; found {len(classes)}", field="task")
    index = {c: i for i, c in enumerate(classes)}
    dtype = np.int64 if task == "classification" else np.float32
    return np.asarray([index[v] for v in labels], dtype=dtype), classes


def _check(X: np.ndarray, y: np.ndarray, task: str) -> None:
    if not MIN_SAMPLES <= len(X) <= MAX_SAMPLES:
        raise InvalidSpec(f"{len(X)} samples; {MIN_SAMPLES} to {MAX_SAMPLES} needed", field="body")
    if int(np.prod(X.shape[1:])) > MAX_FEATURES:
        raise InvalidSpec(f"more than {MAX_FEATURES} features per sample", field="body")
    if int(np.prod(X.shape[1:])) == 0:
        raise InvalidSpec(f"X has no features: its shape is {X.shape}", field="body")
    if task == "regression":
        return
    counts = np.bincount(y.astype(np.int64))
    if len(counts) < 2:
        raise InvalidSpec("a classification target needs at least 2 classes", field="body")
    if len(counts) > MAX_CLASSES:
        raise InvalidSpec(f"{len(counts)} classes; at most {MAX_CLASSES}", field="body")
    if counts.min() < 2:
        raise InvalidSpec(
            "every class needs 2 samples or more for a stratified train/validation split",
            field="body",
        )
