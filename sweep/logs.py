"""Logging for the server and the worker: text or JSON lines (SWEEP_LOG_FORMAT=json), each
record carrying the request id of the call it belongs to.

The worker sends a request id with every call (`X-Request-ID`: `w<worker>-t<trial>-a<attempt>`
for the calls about one attempt of a trial) and logs under the same id, and the server logs
each request under the id it was sent, so one trial's story can be followed across both with
one filter. A request without an id gets one from the server, returned in `X-Request-ID`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import os
import re
from datetime import UTC, datetime
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# Attributes every LogRecord has; anything else was passed in `extra` and is a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request id of the context it was logged in."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, and the record's
    extra fields (trial_id, route, status, duration_ms...)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        entry |= {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def config(log_format: str, level: str = "INFO") -> dict[str, Any]:
    """A logging dictConfig for `log_format` ("text" or "json"): Sweep's loggers and uvicorn's
    server messages to stderr. Sweep writes its own access log (sweep.access), with the
    request id, so uvicorn's is off."""
    formatter: dict[str, Any] = (
        {"()": "sweep.logs.JsonFormatter"} if log_format == "json" else {"format": TEXT_FORMAT}
    )
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "default",
        "filters": ["request_id"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "sweep.logs.RequestIdFilter"}},
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "loggers": {
            "sweep": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


def configure(log_format: str | None = None, level: str = "INFO") -> None:
    """Configure logging; the format defaults to SWEEP_LOG_FORMAT's (text)."""
    logging.config.dictConfig(config(log_format or os.environ.get("SWEEP_LOG_FORMAT", ""), level))
