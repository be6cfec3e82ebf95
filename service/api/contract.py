"""The OpenAPI document as the contract a generated client is built from: every status a route
can answer, each error in the one shape the service sends (`{"error": {"code", "message",
"field"?}}`), binary bodies and downloads with their media types, plots with a schema.

What every route shares is derived here from the route itself (its path parameters, the roles
its Allow dependency admits, whether it takes a body); what only some routes answer (a 409 on
a GET, a 429, a 307) they declare in their decorators."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from sweep.service.auth import EVERYONE

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "invalid, not_found, conflict..."},
                "message": {"type": "string"},
                "field": {"type": "string", "description": "the input at fault, when one is"},
                "details": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["field", "message"],
                        "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                    },
                },
            },
        }
    },
}
# Not "Error": a model named like its one property confuses generated code (error.error).
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
}
PLOTLY_FIGURE = {
    "type": "object",
    "required": ["data", "layout"],
    "properties": {
        "data": {"type": "array", "items": {"type": "object", "additionalProperties": True}},
        "layout": {"type": "object", "additionalProperties": True},
    },
    "additionalProperties": True,
}
BINARY = {"type": "string", "format": "binary"}
# A download a store with pre-signed URLs may answer with a redirect (?direct=true).
REDIRECT: dict[int | str, dict[str, Any]] = {
    307: {
        "description": "the object at a pre-signed URL (Location), with direct=true",
        "headers": {"Location": {"schema": {"type": "string"}}},
    }
}

WHY = {
    "400": "malformed JSON",
    "401": "no token, or one the server does not accept",
    "403": "the token's role or project may not do this",
    "404": "no such resource (or one of another project)",
    "409": "the resource's state does not allow this now",
    "413": "the body is over its size limit",
    "422": "invalid input; error.field names it",
    "503": "the database is unavailable or refused the change for now; retry after Retry-After",
}


def openapi(app: FastAPI, routers: list[tuple[str, APIRouter]]) -> dict[str, Any]:
    """The app's OpenAPI document, completed (and kept: FastAPI calls this for /openapi.json);
    `routers` are the (prefix, router) pairs the app includes."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["ErrorResponse"] = ERROR
    routes = {
        (prefix + route.path_format, method.lower()): route
        for prefix, router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            route = routes.get((path, method))
            if route is not None:
                _complete(operation, route, path, method)
    app.openapi_schema = document
    return document


def _complete(operation: dict[str, Any], route: APIRoute, path: str, method: str) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    statuses = {"422", "503"}
    if "security" in operation:
        statuses.add("401")
        if _restricted(route.dependant):
            statuses.add("403")
    if "{" in path:
        statuses.add("404")
    if method in ("post", "put", "patch", "delete"):
        statuses |= {"409", "413"}  # any write may meet a concurrent one; bodies are capped
        if _json_body(operation):
            statuses.add("400")
    if path.endswith("/healthz"):
        statuses = set()
    if path.endswith("/readyz"):
        statuses = {"503"}
    for status in statuses:
        answer = responses.setdefault(status, {"description": WHY[status]})
        answer["content"] = {"application/json": {"schema": ERROR_REF}}
        if status == "503":
            answer["headers"] = RETRY_AFTER
    for status, answer in responses.items():  # errors a route declared itself
        if status[0] in "45" and "content" not in answer:
            answer["content"] = {"application/json": {"schema": ERROR_REF}}
    ok = responses.get("200", {}).get("content", {})
    for media in ("application/octet-stream", "text/plain"):
        if media in ok:
            ok[media] = {"schema": {"type": "string"} if media == "text/plain" else BINARY}
    if ok.get("application/json") == {}:  # a route answering raw JSON: a plotly figure
        ok["application/json"] = {"schema": PLOTLY_FIGURE}


def _restricted(dependant: Dependant) -> bool:
    """Whether some Allow dependency of the route admits fewer roles than every token's."""
    for sub in dependant.dependencies:
        roles = getattr(sub.call, "roles", None)
        if roles is not None and frozenset(roles) != EVERYONE:
            return True
        if _restricted(sub):
            return True
    return False


def _json_body(operation: dict[str, Any]) -> bool:
    return "application/json" in operation.get("requestBody", {}).get("content", {})
