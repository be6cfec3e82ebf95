"""Requests whose transaction lost a race (a serialization failure, a deadlock) run again here,
a few times, before the caller hears of it: nothing of theirs was committed (one commit point
per request), so running them again is what the caller would do, only sooner.

The error handler marks such an answer with RETRY_HEADER; this middleware holds each answer's
start until it knows, replays the request's body (JSON bodies up to MAX_BODY are kept for
that; uploads stream through and run once) and drops the marker from what it finally sends."""

from __future__ import annotations

import asyncio
import random

from starlette.types import ASGIApp, Message, Receive, Scope, Send

RETRY_HEADER = b"x-sweep-run-again"
MAX_BODY = 1 << 20
ATTEMPTS = 3
BACKOFF_SECONDS = 0.02  # before the second attempt; doubled before the third, with jitter


class RunAgainOnRace:
    def __init__(self, app: ASGIApp, attempts: int = ATTEMPTS) -> None:
        self.app, self.attempts = app, attempts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _replayable(scope):
            await self.app(scope, receive, send)
            return
        body, complete = await _buffer(receive)
        if not complete:  # longer than it said: one run, the rest streamed from the caller
            await self.app(scope, _replay(body, receive), send)
            return
        for attempt in range(1, self.attempts + 1):
            last = attempt == self.attempts
            again = await self._run(scope, _replay(body, receive), send, hold=not last)
            if not again:
                return
            await asyncio.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))

    async def _run(self, scope: Scope, receive: Receive, send: Send, *, hold: bool) -> bool:
        """Run the request once; True when its answer asked to be run again (and was not
        sent, which only happens while `hold`)."""
        dropped = False

        async def answer(message: Message) -> None:
            nonlocal dropped
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                marked = any(name == RETRY_HEADER for name, _ in headers)
                if marked and hold:
                    dropped = True
                    return
                message["headers"] = [(n, v) for n, v in headers if n != RETRY_HEADER]
            if not dropped:
                await send(message)

        await self.app(scope, receive, answer)
        return dropped


def _replayable(scope: Scope) -> bool:
    """A call without a body, or with a JSON one of at most MAX_BODY bytes: uploads stream
    through untouched (they are checked before their first byte is read, and never kept)."""
    headers = dict(scope["headers"])
    length = headers.get(b"content-length")
    if length is None:
        return b"transfer-encoding" not in headers
    json_body = headers.get(b"content-type", b"").startswith(b"application/json")
    return length.isdigit() and (int(length) == 0 or (json_body and int(length) <= MAX_BODY))


async def _buffer(receive: Receive) -> tuple[list[Message], bool]:
    """The request's body messages, up to MAX_BODY bytes; and whether that was all of it."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, True  # the caller went away: the app will hear it
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return messages, True
        if size > MAX_BODY:
            return messages, False


def _replay(messages: list[Message], rest: Receive) -> Receive:
    """A receive that gives `messages` again, then what `rest` gives (the caller's own: the
    rest of a large body, or its disconnect when it comes)."""
    queue = list(messages)

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        return await rest()

    return receive
