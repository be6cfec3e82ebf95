"""Workers: the processes that claim and run trials."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.schemas import WorkerRead, WorkerRegister
from service.tables import Worker


def register(session: Session, *, body: WorkerRegister) -> WorkerRead:
    worker = Worker(name=body.name, hostname=body.hostname, device=body.device, pid=body.pid)
    session.add(worker)
    session.flush()
    return WorkerRead.model_validate(worker, from_attributes=True)
