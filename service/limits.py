"""Request limits: body sizes by kind of route, and a per-token submission rate."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from sweep.service.config import Settings
from sweep.service.errors import TooLarge, TooMany


class BodyLimit:
    """ASGI middleware refusing a request body past its route's limit with a 413: at once
    when Content-Length says so, else as soon as the streamed body passes it. JSON bodies
    are small and read here in full; uploads (PUT) stream on to their route, which counts."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    def limit(self, method: str, path: str) -> int:
        if method == "PUT" and "/datasets/" in path:  # parsed in memory
            return self.settings.max_dataset_bytes
        if method == "PUT":  # artifacts, streamed to the store
            return self.settings.max_artifact_bytes
        if method == "POST" and path.rstrip("/").endswith("/experiments"):
            return self.settings.max_spec_bytes
        return self.settings.max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["method"], scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(send, limit)
            return
        if scope["method"] == "PUT":
            await self.app(scope, receive, send)
            return
        body = await read_body(receive, limit)
        if body is None:
            await _refuse(send, limit)
            return
        await self.app(scope, replay_body(body, receive), send)


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None once it passes `limit`."""
    chunks, seen = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            return None
        chunks.append(chunk)
        if message["type"] != "http.request" or not message.get("more_body"):
            return b"".join(chunks)


def replay_body(body: bytes, receive: Receive) -> Receive:
    """Hand the app the body already read, then the connection's later messages."""
    delivered = False

    async def replayed() -> Any:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def _refuse(send: Send, limit: int) -> None:
    body = TooLarge(f"request body over {limit} bytes").json()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class SubmissionRate:
    """At most `per_minute` submissions per token in any minute (per API process)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._seen: dict[int | None, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, token_id: int | None) -> None:
        now = time.monotonic()
        with self._lock:
            recent = self._seen.setdefault(token_id, deque())
            while recent and now - recent[0] > 60:
                recent.popleft()
            if len(recent) >= self.per_minute:
                raise TooMany(
                    f"more than {self.per_minute} submissions a minute; "
                    f"try again in {60 - (now - recent[0]):.0f} s"
                )
            recent.append(now)
