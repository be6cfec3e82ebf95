"""Every request's id, access log line and latency, in one pure ASGI middleware."""

from __future__ import annotations

import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sweep import logs
from sweep.service.metrics import Metrics

access = logging.getLogger("sweep.access")


class Observe:
    """Takes the request id the caller sent (X-Request-ID) or makes one, logs under it, returns
    it, and times the request by route template (so /trials/{trial_id} is one series)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = _header(scope, b"x-request-id")
        rid = sent if sent and logs.VALID_ID.fullmatch(sent) else uuid.uuid4().hex[:16]
        token = logs.request_id.set(rid)
        scope.setdefault("state", {})["request_id"] = rid  # for handlers outside this one
        started = time.perf_counter()
        status = 500  # unless a response starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = _template(scope)
            method = scope["method"]
            self.metrics.http_seconds.labels(method, route, str(status)).observe(seconds)
            access.info(
                "%s %s %d %.1f ms",
                method,
                scope["path"],
                status,
                seconds * 1000,
                extra={
                    "method": method,
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    **_ids(scope),
                },
            )
            logs.request_id.reset(token)


def _template(scope: Scope) -> str:
    """The matched route's path with its parameters named: /api/v1/trials/{trial_id}; every
    path no route matched is one series, "unmatched"."""
    if scope.get("route") is None:
        return "unmatched"
    names = {str(v): k for k, v in scope.get("path_params", {}).items()}
    return "/".join(
        f"{{{names.pop(part)}}}" if part in names else part for part in scope["path"].split("/")
    )


def _ids(scope: Scope) -> dict[str, int]:
    """experiment_id, trial_id, worker_id of the path: one trial's requests by field."""
    params = scope.get("path_params", {}).items()
    return {k: int(v) for k, v in params if k.endswith("_id") and str(v).isdigit()}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
