from fastapi import APIRouter

from sweep.service import db
from sweep.service.api.deps import DatabaseDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers. It does not look at the database, so an orchestrator
    does not restart every API process while the database is down (see /readyz)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "the database does not take writes now"}})
def readyz(database: DatabaseDep) -> dict[str, str]:
    """Readiness: the database takes a write from this process (a row rewritten with its own
    value), so a load balancer or Kubernetes sends traffic elsewhere while it is unreachable,
    read-only, refusing this process's role, locked, or out of disk."""
    db.probe_write(database)
    return {"status": "ready"}
