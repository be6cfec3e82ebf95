from fastapi import APIRouter

from sweep.service import db
from sweep.service.api.deps import SessionDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(session: SessionDep) -> dict[str, str]:
    """Liveness and database reachability."""
    db.ping(session)
    return {"status": "ok"}
