"""The worker protocol's most frequent calls (claims, reports, heartbeats, completions)
answered without FastAPI's routing and dependency solving, by the same route functions.

With a thousand workers, these calls are most of an API process's load, and FastAPI's share
of one (matching it against the included routers, solving its five dependencies, encoding the
answer) was larger than the call's own work. This ASGI middleware, the innermost, takes such a
call when everything in it is ordinary: a known path, an id in range, an attempt token where
the call names an attempt, a JSON body its model accepts, a bearer token. It then finds the
caller, checks the role and calls the route function exactly as FastAPI would. Anything else
(a malformed body, a missing header, an odd `Authorization`) goes on to FastAPI with its body,
so every refusal keeps FastAPI's validation and error shape; errors raised here are answered
by the app's own handlers.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from inspect import isawaitable
from typing import Any

from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from sweep.service.api import trials, workers
from sweep.service.api.deps import MAX_ATTEMPT_TOKEN, Services, caller_for
from sweep.service.auth import RUNNERS
from sweep.service.limits import read_body, replay_body
from sweep.service.schemas import MAX_INT, ClaimRequest, CompleteIn, ReportIn


@dataclass(frozen=True)
class Call:
    """One of the calls this lane takes: its route function, the path parameter it takes,
    its body's model if any, whether it names an attempt (X-Attempt-Token), and whether the
    route takes the request (a claim watches for its caller leaving)."""

    route: Callable[..., Awaitable[Any]]
    id_name: str
    body: type[BaseModel] | None
    attempt: bool = True
    request: bool = False


CALLS = {
    ("trials", "reports"): Call(trials.report_epoch, "trial_id", ReportIn),
    ("trials", "heartbeat"): Call(trials.heartbeat, "trial_id", None),
    ("trials", "complete"): Call(trials.complete_trial, "trial_id", CompleteIn),
    ("workers", "claim"): Call(
        workers.claim_trial, "worker_id", ClaimRequest, attempt=False, request=True
    ),
}


class WorkerLane:
    def __init__(
        self, app: ASGIApp, prefix: str, handlers: Mapping[Any, Callable[..., Any]]
    ) -> None:
        # `handlers`: the app's exception handlers, by class (read at each error: the app
        # installs them after its middleware).
        self.app, self.handlers = app, handlers
        collections = "|".join(dict.fromkeys(c for c, _ in CALLS))
        actions = "|".join(dict.fromkeys(a for _, a in CALLS))
        self.path = re.compile(f"{prefix}/({collections})/([1-9][0-9]{{0,9}})/({actions})")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = None
        # Under a root path FastAPI routes on the path without it: left to FastAPI.
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            found = self.path.fullmatch(scope["path"])
        call = None if found is None else CALLS.get((found[1], found[3]))
        if found is None or call is None:
            await self.app(scope, receive, send)
            return
        body = await read_body(receive, sys.maxsize) or b""  # BodyLimit bounded it
        parsed = _arguments(scope, call, int(found[2]), body)
        if parsed is None:  # FastAPI says what is wrong with it
            await self.app(scope, replay_body(body, receive), send)
            return
        scope["route"], scope["path_params"] = call, {call.id_name: found[2]}  # for Observe
        authorization, arguments = parsed
        if call.request:
            arguments["request"] = Request(scope, receive)
        try:
            answer = await self._call(scope, call, authorization, arguments)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            response = handler(Request(scope, receive), exc)
            if isawaitable(response):
                response = await response
            await response(scope, receive, send)
            return
        if isinstance(answer, Response):  # a claim that found no trial: 204
            await answer(scope, receive, send)
            return
        content = answer.__pydantic_serializer__.to_json(answer)
        headers = [
            (b"content-length", str(len(content)).encode()),
            (b"content-type", b"application/json"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _call(
        self, scope: Scope, call: Call, authorization: str | None, arguments: dict[str, Any]
    ) -> BaseModel | Response:
        services: Services = scope["app"].state.services
        caller = await caller_for(scope["app"].state, authorization)
        caller.require(RUNNERS)
        return await call.route(caller=caller, services=services, **arguments)

    def _handler(self, exc: Exception) -> Callable[..., Any] | None:
        """The app's handler for `exc`; None for an unexpected error, which goes on to the
        app's last handler, as it would from a route."""
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            if cls in self.handlers:
                return self.handlers[cls]
        return None


def _arguments(
    scope: Scope, call: Call, id_: int, body: bytes
) -> tuple[str | None, dict[str, Any]] | None:
    """From an ordinary call, its `Authorization` as deps.get_caller passes it on, and the
    route function's arguments but the caller and services; None from any other call."""
    if id_ > MAX_INT:
        return None
    token = authorization = content_type = None
    for name, value in scope["headers"]:  # the first of each, as Starlette's Headers reads
        if name == b"x-attempt-token" and token is None:
            token = value
        elif name == b"authorization" and authorization is None:
            authorization = value
        elif name == b"content-type" and content_type is None:
            content_type = value
    arguments: dict[str, Any] = {call.id_name: id_}
    if call.attempt:
        if token is None or not 0 < len(token) <= MAX_ATTEMPT_TOKEN:
            return None
        arguments["token"] = token.decode("latin-1")
    if call.body is not None:
        media_type = (content_type or b"").partition(b";")[0].strip().lower()
        if media_type != b"application/json":  # FastAPI's rules for the others
            return None
        try:
            arguments["body"] = call.body.model_validate(json.loads(body))
        except (ValueError, RecursionError):  # not JSON, nested too deep, or not the model's
            return None
    return _bearer(authorization), arguments


def _bearer(authorization: bytes | None) -> str | None:
    """What FastAPI's HTTPBearer reads of the header, as deps.get_caller passes it on."""
    scheme, credentials = get_authorization_scheme_param(
        None if authorization is None else authorization.decode("latin-1")
    )
    return f"Bearer {credentials}" if scheme.lower() == "bearer" and credentials else None
