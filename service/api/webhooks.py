from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from sweep.service import webhooks
from sweep.service.api.deps import ADMIN, SessionDep
from sweep.service.schemas import (
    MAX_INT,
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveryRead,
    WebhookRead,
)

router = APIRouter(prefix="/webhooks", tags=["webhooks"], dependencies=[ADMIN])

WebhookId = Annotated[int, Path(ge=1, le=MAX_INT)]


@router.post("", status_code=status.HTTP_201_CREATED)
def create_webhook(body: WebhookCreate, session: SessionDep) -> WebhookCreated:
    """Send a project's events to a URL, signed with the secret in this answer only."""
    return webhooks.create(session, body, body.project)


@router.get("")
def list_webhooks(session: SessionDep) -> list[WebhookRead]:
    """Every webhook (without its secret)."""
    return webhooks.listing(session)


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_webhook(webhook_id: WebhookId, session: SessionDep) -> Response:
    """Stop sending to it; its pending deliveries go with it."""
    webhooks.delete(session, webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{webhook_id}/deliveries")
def list_deliveries(
    webhook_id: WebhookId,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[WebhookDeliveryRead]:
    """Its deliveries, newest first: state, attempts, the receiver's last answer."""
    return webhooks.deliveries(session, webhook_id, limit)
