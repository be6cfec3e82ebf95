"""Workers: the processes that claim and run trials."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.schemas import WorkerRead, WorkerRegister
from service.tables import Worker


def register(session: Session, *, body: WorkerRegister, project: str | None) -> WorkerRead:
    worker = Worker(
        name=body.name, hostname=body.hostname, device=body.device, pid=body.pid, project=project
    )
    session.add(worker)
    session.flush()
    return WorkerRead.model_validate(worker, from_attributes=True)


def recent(session: Session, *, limit: int) -> list[WorkerRead]:
    """Workers, most recently seen first."""
    rows = session.scalars(select(Worker).order_by(Worker.last_seen_at.desc()).limit(limit))
    return [WorkerRead.model_validate(w, from_attributes=True) for w in rows]
