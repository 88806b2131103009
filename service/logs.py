"""Structured logs: one JSON object per line, each carrying the request id.

The request id is the client's ``X-Request-ID`` when it looks like an id (letters, digits,
``.``, ``_``, ``-``; at most 128), else a fresh one; asgi-correlation-id keeps it in a
context variable that the log filter reads, and sends it back in the response header.
Passed to uvicorn as its ``log_config``, so access logs are JSON too.
"""

from __future__ import annotations

import re
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


def valid_request_id(value: str) -> bool:
    return _REQUEST_ID.fullmatch(value) is not None


def log_config(json_logs: bool = True, level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the service, uvicorn included."""
    fmt = "%(asctime)s %(levelname)s %(name)s %(message)s %(correlation_id)s"
    formatter = ({"()": "pythonjsonlogger.json.JsonFormatter", "fmt": fmt,
                  "datefmt": "%Y-%m-%dT%H:%M:%S%z",
                  "reserved_attrs": [*RESERVED_ATTRS, "color_message"],  # uvicorn's ANSI copy
                  "rename_fields": {"asctime": "time", "levelname": "level",
                                    "name": "logger", "correlation_id": "request_id"}}
                 if json_logs else {"format": "%(asctime)s %(levelname)s [%(correlation_id)s] "
                                              "%(name)s: %(message)s"})
    handler = {"class": "logging.StreamHandler", "formatter": "default",
               "filters": ["request_id"], "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "asgi_correlation_id.CorrelationIdFilter",
                                   "default_value": "-"}},
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.access": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "service": {"handlers": ["default"], "level": level, "propagate": False},
        },
    }
