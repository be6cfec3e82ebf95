"""Bytes that versions before the artifact store kept in SQL (weights, checkpoints, outputs
and datasets' arrays), moved into the store, and back before a downgrade.

One row at a time, each in its own transaction: the object is put, read back and checked
against the row's sha256, and only then is the artifact row added and the old row deleted.
Interrupted, it starts again where it stopped; a row moved twice (two processes, a rerun) is
moved once. Under a lock on PostgreSQL, so API processes starting together take turns.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Column, Table, delete, func, insert, select, text, update
from sqlalchemy.orm import Session

from sweep.service import artifacts
from sweep.service.artifacts import SUFFIXES, Kind
from sweep.service.db import Database, is_sqlite
from sweep.service.store import Incoming, Store, Stored, sha256_of
from sweep.service.tables import (
    LEGACY_BLOBS,
    LEGACY_CHECKPOINTS,
    LEGACY_OUTPUTS,
    LEGACY_WEIGHTS,
    Artifact,
    Trial,
    UserDataset,
    utcnow,
)

log = logging.getLogger("sweep.service.artifacts")
MOVE_LOCK = 0x5_3E_EA  # advisory lock id: one process moves blobs at a time
TRIAL_TABLES: tuple[tuple[Table, Kind], ...] = (
    (LEGACY_WEIGHTS, "weights"),
    (LEGACY_CHECKPOINTS, "checkpoint"),
    (LEGACY_OUTPUTS, "outputs"),
)
BATCH = 50


class Corrupted(RuntimeError):
    """An object read back from the store is not what was put there."""


def pending(session: Session) -> int:
    """Rows still holding their bytes in SQL."""
    tables = (LEGACY_WEIGHTS, LEGACY_CHECKPOINTS, LEGACY_OUTPUTS, LEGACY_BLOBS)
    return sum(session.scalar(select(func.count()).select_from(t)) or 0 for t in tables)


def into_store(db: Database, store: Store) -> int:
    """Move every blob SQL still holds into the store; returns how many moved."""
    moved = 0
    with _exclusive(db):
        for table, kind in TRIAL_TABLES:
            while ids := _ids(db, table.c.trial_id):
                for trial_id in ids:
                    moved += _move_trial_row(db, store, table, kind, trial_id)
        while shas := _ids(db, LEGACY_BLOBS.c.sha256):
            for sha256 in shas:
                moved += _move_blob(db, store, sha256)
    if moved:
        log.info("moved %d artifacts out of SQL into %s", moved, store.url)
    return moved


def _ids(db: Database, column: Column[Any]) -> list[Any]:
    with db.transaction(write=False) as session:
        return list(session.scalars(select(column).limit(BATCH)))


def _put_checked(store: Store, key: str, data: bytes) -> Stored:
    """Put `data` under `key`, then read it back: the copy must hash the same."""
    incoming = Incoming(store.staging())
    try:
        incoming.write(data)
        stored = incoming.finish()
        store.put_file(key, incoming.path)
    finally:
        incoming.discard()
    with store.open(key) as stream:
        copy = sha256_of(stream)
    if copy != stored:
        raise Corrupted(f"{key}: the store holds {copy}, not the {stored} put there")
    return stored


def _move_trial_row(db: Database, store: Store, table: Table, kind: Kind, trial_id: int) -> int:
    with db.transaction(write=False) as session:
        row = session.execute(select(table).where(table.c.trial_id == trial_id)).first()
        trial = session.get(Trial, trial_id)
    if row is None or trial is None:
        return 0
    where = f"experiments/{trial.experiment_id}/trials/{trial_id}"
    key = f"{where}/{kind}-migrated{SUFFIXES[kind]}"
    stored = _put_checked(store, key, row.data)
    with db.transaction() as session:
        still = session.execute(
            select(table.c.trial_id).where(table.c.trial_id == trial_id).with_for_update()
        ).first()
        newer = artifacts.of_trial(session, trial_id, kind)
        if still is None or newer is not None:  # moved by another process, or replaced since
            if newer is None or newer.key != key:
                artifacts.forget_key(session, key)
            session.execute(delete(table).where(table.c.trial_id == trial_id))
            return 0
        epoch = row.epoch if kind == "checkpoint" else None
        session.add(
            Artifact(
                key=key,
                kind=kind,
                trial_id=trial_id,
                epoch=epoch,
                size=stored.size,
                sha256=stored.sha256,
                created_at=row.created_at,
            )
        )
        session.execute(delete(table).where(table.c.trial_id == trial_id))
    return 1


def _move_blob(db: Database, store: Store, sha256: str) -> int:
    with db.transaction(write=False) as session:
        row = session.execute(select(LEGACY_BLOBS).where(LEGACY_BLOBS.c.sha256 == sha256)).first()
    if row is None:
        return 0
    key = f"datasets/{sha256}-migrated{SUFFIXES['dataset']}"
    stored = _put_checked(store, key, row.data)
    with db.transaction() as session:
        still = session.execute(
            select(LEGACY_BLOBS.c.sha256).where(LEGACY_BLOBS.c.sha256 == sha256).with_for_update()
        ).first()
        if still is None:
            return 0
        artifact = session.scalars(select(Artifact).where(Artifact.key == key)).first()
        if artifact is None:
            artifact = artifacts.add_dataset(session, key, stored)
        session.execute(
            update(UserDataset)
            .where(UserDataset.sha256 == sha256, UserDataset.artifact_id.is_(None))
            .values(artifact_id=artifact.id)
        )
        session.execute(delete(LEGACY_BLOBS).where(LEGACY_BLOBS.c.sha256 == sha256))
    return 1


def into_sql(db: Database, store: Store) -> int:
    """Move every artifact back into SQL rows, as versions before the store kept them (the
    step before `alembic downgrade 0009`). Returns how many moved."""
    moved = 0
    tables: dict[str, Table] = {kind: table for table, kind in TRIAL_TABLES}
    with _exclusive(db):
        while True:
            with db.transaction(write=False) as session:
                batch = session.scalars(select(Artifact).limit(BATCH)).all()
            if not batch:
                break
            for artifact in batch:
                with store.open(artifact.key) as stream:
                    data = stream.read()
                if hashlib.sha256(data).hexdigest() != artifact.sha256:
                    raise Corrupted(f"{artifact.key} does not match its sha256 {artifact.sha256}")
                with db.transaction() as session:
                    if artifact.kind == "dataset":
                        _dataset_into_sql(session, artifact, data)
                    else:
                        values = {"trial_id": artifact.trial_id, "data": data}
                        if artifact.kind == "checkpoint":
                            values["epoch"] = artifact.epoch or 0
                        session.execute(
                            insert(tables[artifact.kind]).values(
                                **values, size=len(data), created_at=artifact.created_at
                            )
                        )
                    artifacts.forget_key(session, artifact.key)
                    session.execute(delete(Artifact).where(Artifact.id == artifact.id))
                moved += 1
    return moved


def _dataset_into_sql(session: Session, artifact: Artifact, data: bytes) -> None:
    holders = session.scalars(
        select(UserDataset.sha256).where(UserDataset.artifact_id == artifact.id)
    ).all()
    for sha256 in set(holders):
        present = session.execute(
            select(LEGACY_BLOBS.c.sha256).where(LEGACY_BLOBS.c.sha256 == sha256)
        ).first()
        if present is None:
            session.execute(
                insert(LEGACY_BLOBS).values(
                    sha256=sha256, data=data, size=len(data), created_at=utcnow()
                )
            )
    session.execute(
        update(UserDataset).where(UserDataset.artifact_id == artifact.id).values(artifact_id=None)
    )


@contextmanager
def _exclusive(db: Database) -> Iterator[None]:
    if is_sqlite(db.engine):  # its write lock already takes turns
        yield
        return
    with db.engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MOVE_LOCK})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MOVE_LOCK})
            conn.commit()
