"""Webhooks: a receiver on 127.0.0.1 gets a project's events, signed, and a delivery it
refuses is sent again until it takes it."""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sweep.service.app import create_app
from sweep.service.config import Settings
from sweep.service.webhooks import signature
from tests.helpers import (
    attempt_headers,
    authorize,
    budget,
    claim_trial,
    finish_quickly,
    make_spec,
    register,
    wait_until,
)

API = "/api/v1"


class Receiver(ThreadingHTTPServer):
    """Records what it is sent; answers 500 to the first request, 204 to the others."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.refused = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.server.refused == 0:
            self.server.refused += 1
            self.send_response(500)
        else:
            self.server.received.append((dict(self.headers), body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    quick = settings.model_copy(
        update={"webhook_poll_seconds": 0.05, "webhook_retry_seconds": 0.05}
    )
    with TestClient(create_app(quick)) as test_client:
        yield authorize(test_client)


def test_a_projects_events_reach_its_webhook_signed_and_retried(
    client: TestClient, receiver: Receiver
) -> None:
    created = client.post(f"{API}/webhooks", json={"url": receiver.url})
    assert created.status_code == 201, created.text
    hook = created.json()
    assert "secret" not in client.get(f"{API}/webhooks").json()[0]  # shown once

    experiment_id = client.post(f"{API}/experiments", json=make_spec(budget=budget(2))).json()["id"]
    worker = register(client)
    failing = claim_trial(client, worker)["trial_id"]
    failed = client.post(
        f"{API}/trials/{failing}/fail",
        headers=attempt_headers(failing),
        json={"reason": "diverged", "message": "non-finite loss at epoch 1"},
    )
    assert failed.status_code == 200, failed.text
    finish_quickly(client, worker, 0.9)  # the best, and the experiment's last: it ends

    wait_until(lambda: len(receiver.received) >= 3, 30, "three deliveries", poll=0.05)
    events = {}
    for headers, body in receiver.received:
        assert hmac.compare_digest(headers["X-Sweep-Signature"], signature(hook["secret"], body))
        message = json.loads(body)
        assert message["event"] == headers["X-Sweep-Event"]
        events[message["event"]] = message
    assert set(events) == {"trial.failed", "trial.new_best", "experiment.ended"}
    assert events["trial.failed"]["trial"]["failure_reason"] == "diverged"
    assert events["trial.new_best"]["trial"]["value"] == 0.9
    ended = events["experiment.ended"]["experiment"]
    assert (ended["id"], ended["state"]) == (experiment_id, "completed")
    assert ended["best_trial"] == events["trial.new_best"]["trial"]["name"]

    log = client.get(f"{API}/webhooks/{hook['id']}/deliveries").json()
    assert {d["state"] for d in log} == {"delivered"}
    assert sorted(d["attempts"] for d in log) == [1, 1, 2]  # the refused one, sent again


def test_only_admins_register_webhooks_and_only_web_addresses(client: TestClient) -> None:
    refused = client.post(f"{API}/webhooks", json={"url": "file:///etc/passwd"})
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "url"
    as_user = authorize(client, role="user")
    assert as_user.post(f"{API}/webhooks", json={"url": "http://127.0.0.1/"}).status_code == 403
    authorize(client)
    assert client.get(f"{API}/webhooks").json() == []
