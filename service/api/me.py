from fastapi import APIRouter

from sweep.service.api.deps import ANY_TOKEN, CallerDep
from sweep.service.auth import CONTROLLERS
from sweep.service.schemas import Me

router = APIRouter(tags=["tokens"])


@router.get("/me", dependencies=[ANY_TOKEN])
def whoami(caller: CallerDep) -> Me:
    """The role and project of the token in use, and whether it may pause, resume and cancel
    (for clients such as the dashboard that show only what the caller may do)."""
    return Me(role=caller.role, project=caller.project, can_control=caller.role in CONTROLLERS)
