"""Webhooks: an admin registers a URL for a project's events, and the service POSTs each event
there, signed, retried with backoff until the receiver answers 2xx.

Events, and what their JSON carries besides {"event", "delivery", "created_at"}:
  experiment.ended   an experiment completed or was cancelled    {"experiment": {...}}
  experiment.failed  an experiment failed (no trial completed...) {"experiment": {...}}
  trial.failed       a trial failed (diverged, error, oom, lost)  {"trial": {...}}
  trial.new_best     a completed trial is the experiment's best   {"trial": {...}}

A delivery is written in the transaction of the change it reports, so none is lost to a crash
and none is sent for a change rolled back. A background pass in every API process claims due
deliveries (a short lease on the row: skip-locked on PostgreSQL), POSTs them outside any
transaction, and records the answer. The body is signed with the webhook's secret:
X-Sweep-Signature: sha256=HMAC-SHA256(secret, body), hex.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from sweep.service.db import Database
from sweep.service.errors import NotFound
from sweep.service.schemas import (
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveryRead,
    WebhookRead,
    trial_name,
)
from sweep.service.tables import Experiment, Trial, Webhook, WebhookDelivery, utcnow

log = logging.getLogger("sweep.webhooks")

EVENTS = ("experiment.ended", "experiment.failed", "trial.failed", "trial.new_best")
MAX_ATTEMPTS = 8  # then the delivery is failed, and stays in the log
MAX_BACKOFF_SECONDS = 600.0
SEND_TIMEOUT_SECONDS = 10.0
BATCH = 20


# --- registering ---------------------------------------------------------------------------


def create(session: Session, body: WebhookCreate, project: str) -> WebhookCreated:
    hook = Webhook(
        project=project,
        url=body.url,
        events=list(body.events or EVENTS),
        secret=secrets.token_hex(32),
    )
    session.add(hook)
    session.flush()
    return WebhookCreated(**read(hook).model_dump(), secret=hook.secret)


def listing(session: Session) -> list[WebhookRead]:
    return [read(h) for h in session.scalars(select(Webhook).order_by(Webhook.id))]


def delete(session: Session, webhook_id: int) -> None:
    session.delete(_get(session, webhook_id))
    session.flush()


def deliveries(session: Session, webhook_id: int, limit: int) -> list[WebhookDeliveryRead]:
    _get(session, webhook_id)
    found = session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.webhook_id == webhook_id)
        .order_by(WebhookDelivery.id.desc())
        .limit(limit)
    )
    return [WebhookDeliveryRead.model_validate(d, from_attributes=True) for d in found]


def read(hook: Webhook) -> WebhookRead:
    return WebhookRead.model_validate(hook, from_attributes=True)


def _get(session: Session, webhook_id: int) -> Webhook:
    hook = session.get(Webhook, webhook_id)
    if hook is None:
        raise NotFound(f"no webhook {webhook_id}")
    return hook


# --- events --------------------------------------------------------------------------------


def experiment_ended(session: Session, experiment: Experiment) -> None:
    event = "experiment.failed" if experiment.state == "failed" else "experiment.ended"
    body = {
        "id": experiment.id,
        "name": experiment.name,
        "project": experiment.project,
        "state": experiment.state,
        "stop_reason": experiment.stop_reason,
        "best_value": experiment.best_value,
        "best_trial": trial_name(experiment.id, experiment.best_trial_number),
    }
    _emit(session, experiment.project, event, {"experiment": body})


def trial_ended(session: Session, experiment: Experiment, trial: Trial, *, best: bool) -> None:
    """A failed trial, or a completed one that is the experiment's best so far."""
    event = "trial.new_best" if best else "trial.failed"
    body = {
        "id": trial.id,
        "name": trial_name(experiment.id, trial.number),
        "experiment_id": experiment.id,
        "state": trial.state,
        "value": trial.value,
        "params": trial.params,
        "failure_reason": trial.failure_reason,
        "failure_message": (trial.failure_message or "")[:2000] or None,
    }
    _emit(session, experiment.project, event, {"trial": body})


def _emit(session: Session, project: str, event: str, payload: dict[str, Any]) -> None:
    for hook in session.scalars(select(Webhook).where(Webhook.project == project)):
        if event in hook.events:
            session.add(WebhookDelivery(webhook_id=hook.id, event=event, payload=payload))


# --- sending -------------------------------------------------------------------------------


def signature(secret: str, body: bytes) -> str:
    """What X-Sweep-Signature carries: a receiver computes it again and compares."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def deliver_due(db: Database, http: httpx.Client, backoff_seconds: float) -> int:
    """Send the deliveries that are due; returns how many were tried."""
    with db.transaction() as session:
        due = session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= utcnow())
            .order_by(WebhookDelivery.id)
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        ).all()
        claimed = []
        for delivery in due:
            # Leased: another process (or this one, next round) leaves it alone meanwhile.
            delivery.next_attempt_at = utcnow() + timedelta(seconds=3 * SEND_TIMEOUT_SECONDS)
            hook = session.get(Webhook, delivery.webhook_id)
            assert hook is not None  # deliveries go with their webhook
            message = {
                "event": delivery.event,
                "delivery": delivery.id,
                "created_at": delivery.created_at.isoformat(),
                **delivery.payload,
            }
            claimed.append((delivery.id, hook.url, hook.secret, delivery.event, message))
    for delivery_id, url, secret, event, message in claimed:
        body = json.dumps(message).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Sweep-Event": event,
            "X-Sweep-Delivery": str(delivery_id),
            "X-Sweep-Signature": signature(secret, body),
        }
        status, error = None, None
        try:
            status = http.post(url, content=body, headers=headers).status_code
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        with db.transaction() as session:
            _record(session, delivery_id, status, error, backoff_seconds)
    return len(claimed)


def _record(
    session: Session, delivery_id: int, status: int | None, error: str | None, backoff: float
) -> None:
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None:  # its webhook was deleted meanwhile
        return
    delivery.attempts += 1
    delivery.last_status = status
    if status is not None and 200 <= status < 300:
        delivery.state, delivery.delivered_at, delivery.last_error = "delivered", utcnow(), None
        return
    delivery.last_error = (error or f"the receiver answered {status}")[:500]
    if delivery.attempts >= MAX_ATTEMPTS:
        delivery.state = "failed"
        log.warning("webhook delivery %d failed for good: %s", delivery_id, delivery.last_error)
        return
    wait = min(backoff * 2 ** (delivery.attempts - 1), MAX_BACKOFF_SECONDS)
    delivery.next_attempt_at = utcnow() + timedelta(seconds=wait)
