"""One error tree for the domain, and one JSON shape for every error the API returns."""

from __future__ import annotations

import json
from typing import Any


class SweepError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def json(self) -> bytes:
        return json.dumps(self.body()).encode()

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            error["field"] = self.field
        return {"error": error}


class NotFound(SweepError):
    status_code = 404
    code = "not_found"


class Conflict(SweepError):
    status_code = 409
    code = "conflict"


class InvalidSpec(SweepError):
    status_code = 422
    code = "invalid"


class TooLarge(SweepError):
    status_code = 413
    code = "too_large"


class Unavailable(SweepError):
    status_code = 503
    code = "unavailable"


class Unauthorized(SweepError):
    status_code = 401
    code = "unauthorized"


class Forbidden(SweepError):
    status_code = 403
    code = "forbidden"


class TooMany(SweepError):
    status_code = 429
    code = "rate_limited"
