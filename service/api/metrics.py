from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from sweep.service.api.deps import DatabaseDep, Reader

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics(request: Request, db: DatabaseDep, caller: Reader) -> Response:
    """This API process's Prometheus metrics (a reader token when auth is on: Prometheus
    sends it with `authorization: {credentials: ...}` in its scrape config). Per-experiment
    series cover the token's project (an unscoped token's: every project)."""
    exposition = request.app.state.metrics.exposition(db, caller.project)
    return Response(exposition, media_type=CONTENT_TYPE_LATEST)
