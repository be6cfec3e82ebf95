"""The worker lane answers ordinary claims, reports, heartbeats and completions itself, as
FastAPI's routes do; everything else goes on to FastAPI, whose answer is the contract.

The app under test is the real one on SQLite. To tell who answered, the test wraps what the
lane hands calls on to (the rest of the app, FastAPI's routing) and counts what reaches it."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sweep.service.api.lane import WorkerLane
from sweep.service.app import create_app
from sweep.service.config import Settings
from tests.helpers import API, authorize, budget, claim_trial, quick_spec, register, submit


class Counted:
    """The app behind the lane, counting the calls that reach it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app, self.calls = app, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.calls += 1
        await self.app(scope, receive, send)


def _above_lane(app: Any) -> Any:
    """The middleware that calls the lane."""
    layer = app.middleware_stack
    while not isinstance(layer.app, WorkerLane):
        layer = layer.app
    return layer


@pytest.fixture
def lane_client(sqlite_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, Counted]]:
    settings = Settings(database_url=sqlite_url, data_dir=tmp_path)
    with TestClient(create_app(settings)) as client:
        lane = _above_lane(client.app).app
        behind = lane.app = Counted(lane.app)
        yield authorize(client), behind


def _trials(client: TestClient, n: int) -> list[dict[str, Any]]:
    submit(client, quick_spec(budget=budget(n, max_concurrent=n)))
    return [claim_trial(client, register(client, f"w{i}")) for i in range(n)]


class _as:
    """The client with a fresh token of `role` for a while."""

    def __init__(self, client: TestClient, role: str) -> None:
        self.client, self.role = client, role

    def __enter__(self) -> None:
        self.saved = self.client.headers["Authorization"]
        authorize(self.client, role=self.role)

    def __exit__(self, *_: object) -> None:
        self.client.headers["Authorization"] = self.saved


def _post(
    client: TestClient,
    trial: dict[str, Any],
    action: str,
    body: bytes | None,
    **headers: str,
) -> Any:
    sent = {"X-Attempt-Token": trial["token"], "Content-Type": "application/json", **headers}
    return client.post(
        f"{API}/trials/{trial['trial_id']}/{action}",
        content=body,
        headers={k: v for k, v in sent.items() if v},
    )


def test_ordinary_calls_are_answered_by_the_lane_as_by_their_routes(
    lane_client: tuple[TestClient, Counted],
) -> None:
    client, behind = lane_client
    first, second = _trials(client, 2)
    seen = behind.calls
    report = json.dumps({"epoch": 1, "metrics": {"val_accuracy": 0.5}}).encode()
    answers = [
        _post(client, first, "reports", report),
        _post(client, first, "heartbeat", None),
        _post(client, first, "complete", b'{"value": 0.5, "epoch": 1}'),
    ]
    assert behind.calls == seen, "the lane handed ordinary calls on"
    # The same calls about the second trial through FastAPI's routes: the same answers.
    above = _above_lane(client.app)
    lane, above.app = above.app, behind.app
    routed = [
        _post(client, second, "reports", report),
        _post(client, second, "heartbeat", None),
        _post(client, second, "complete", b'{"value": 0.5, "epoch": 1}'),
    ]
    above.app = lane
    for mine, theirs in zip(answers, routed, strict=True):
        assert (mine.status_code, mine.headers["content-type"]) == (200, "application/json")
        assert (theirs.status_code, theirs.headers["content-type"]) == (200, "application/json"), (
            theirs.text
        )
        assert mine.headers["content-length"] == str(len(mine.content))
        assert mine.headers["x-request-id"]
    assert answers[0].json() == routed[0].json() == {"action": "continue", "reason": None}
    assert answers[1].json() == routed[1].json() == {"action": "continue", "reason": None}
    completed = answers[2].json(), routed[2].json()
    assert completed[0]["state"] == completed[1]["state"] == "completed"
    assert completed[0].keys() == completed[1].keys()
    assert client.get(f"{API}/trials/{first['trial_id']}").json()["value"] == 0.5


def _nested(pair: bytes) -> bytes:
    """A JSON value nested deeper than the interpreter's recursion limit lets json.loads go
    (the limit is whatever this process has: libraries raise it)."""
    depth = sys.getrecursionlimit() + 100
    return pair[:1] * depth + pair[1:] * depth


def test_the_lane_hands_unusual_calls_to_fastapi(lane_client: tuple[TestClient, Counted]) -> None:
    client, behind = lane_client
    (trial,) = _trials(client, 1)
    ok = b'{"epoch": 1, "metrics": {"val_accuracy": 0.5}}'
    cases: list[tuple[str, bytes | None, dict[str, str], int, str]] = [
        ("reports", b'{"epoch": 1, "metrics": {"val_accuracy": 0.5}', {}, 400, "malformed_json"),
        ("reports", b'{"epoch": 0, "metrics": {}}', {}, 422, "invalid"),
        ("reports", b'{"epoch": "1", "metrics": {}}', {}, 422, "invalid"),
        ("reports", b"", {}, 422, "invalid"),
        ("reports", ok, {"Content-Type": "text/plain"}, 422, "invalid"),
        ("reports", ok, {"Content-Type": "application/jsonx"}, 422, "invalid"),
        ("reports", ok, {"X-Attempt-Token": ""}, 422, "invalid"),
        ("reports", ok, {"X-Attempt-Token": "x" * 65}, 422, "invalid"),
        ("complete", b'{"value": "high"}', {}, 422, "invalid"),
        (
            "reports",
            b'{"epoch": 1, "metrics": ' + _nested(b"[]") + b"}",
            {},
            400,
            "http_error",
        ),
    ]
    for action, body, headers, status, code in cases:
        seen = behind.calls
        answer = _post(client, trial, action, body, **headers)
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), (
            action,
            body,
            headers,
            answer.text,
        )
        assert behind.calls == seen + 1, (action, body, headers)
    too_large = client.post(
        f"{API}/trials/{2**31}/heartbeat", headers={"X-Attempt-Token": trial["token"]}
    )
    assert too_large.status_code == 422
    assert too_large.json()["error"]["field"] == "trial_id"
    # None of them changed the trial: its first report is still to come.
    assert _post(client, trial, "reports", ok).json()["action"] == "continue"
    assert client.get(f"{API}/trials/{trial['trial_id']}").json()["state"] == "running"


def test_the_lanes_refusals_are_the_apps_own(lane_client: tuple[TestClient, Counted]) -> None:
    client, behind = lane_client
    (trial,) = _trials(client, 1)
    seen = behind.calls
    ok = b'{"epoch": 1, "metrics": {"val_accuracy": 0.5}}'
    stale = _post(client, trial, "reports", ok, **{"X-Attempt-Token": "not-the-attempt"})
    assert stale.status_code == 409
    assert stale.json()["error"]["code"] == "conflict"
    unknown = _post(client, {**trial, "trial_id": 999_999}, "heartbeat", None)
    assert unknown.status_code == 404
    for authorization in ("Bearer wrong", "Basic dXNlcjpwYXNz"):
        unauthenticated = _post(client, trial, "heartbeat", None, Authorization=authorization)
        assert unauthenticated.status_code == 401
        assert unauthenticated.json()["error"]["code"] == "unauthorized"
    with _as(client, "viewer"):
        forbidden = _post(client, trial, "complete", b'{"value": 0.5}')
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "forbidden"
    assert behind.calls == seen, "the lane handed on calls it could answer"
    assert client.get(f"{API}/trials/{trial['trial_id']}").json()["state"] == "running"


def test_claims_take_the_lane_and_their_refusals_are_fastapis(
    lane_client: tuple[TestClient, Counted],
) -> None:
    client, behind = lane_client
    submit(client, quick_spec(budget=budget(2, max_concurrent=2)))
    workers = [register(client, f"w{i}") for i in range(3)]
    seen = behind.calls
    claim = f"{API}/workers/{{}}/claim"
    first = client.post(claim.format(workers[0]), json={"wait_seconds": 0})
    assert first.status_code == 200, first.text
    again = client.post(claim.format(workers[0]), json={})  # the trial it holds, again
    assert again.json() == first.json()
    assert behind.calls == seen, "the lane handed ordinary claims on"
    above = _above_lane(client.app)
    lane, above.app = above.app, behind.app
    routed = client.post(claim.format(workers[1]), json={"wait_seconds": 0})
    above.app = lane
    assert routed.status_code == 200, routed.text
    assert routed.json().keys() == first.json().keys()
    assert routed.json()["trial_id"] != first.json()["trial_id"]
    seen = behind.calls
    empty = client.post(claim.format(workers[2]), json={"wait_seconds": 0})
    assert (empty.status_code, empty.content) == (204, b"")
    with _as(client, "viewer"):
        forbidden = client.post(claim.format(workers[2]), json={})
    assert forbidden.status_code == 403
    assert behind.calls == seen
    for body, field in ((None, "body"), ({"wait_seconds": -1}, "wait_seconds")):
        refused = client.post(claim.format(workers[2]), json=body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["field"] == field
    assert behind.calls == seen + 2


def test_under_a_root_path_fastapi_routes_the_call(lane_client: tuple[TestClient, Counted]) -> None:
    """FastAPI routes on the path without the root path (here /api/v1/... is /v1/..., which
    no route serves): the lane leaves such calls to it rather than match the whole path."""
    client, behind = lane_client
    (trial,) = _trials(client, 1)
    seen = behind.calls
    headers = [
        (b"authorization", client.headers["Authorization"].encode()),
        (b"x-attempt-token", trial["token"].encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "root_path": "/api",
        "path": f"{API}/trials/{trial['trial_id']}/heartbeat",
        "raw_path": f"{API}/trials/{trial['trial_id']}/heartbeat".encode(),
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    assert client.portal is not None
    client.portal.call(client.app, scope, receive, send)
    assert sent[0]["status"] == 404
    assert behind.calls == seen + 1
