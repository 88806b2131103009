"""The one error type handlers raise; the app turns it into ``{"error": {...}}``."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """An HTTP error with a machine-readable ``code`` and a human message."""

    def __init__(self, status: int, code: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
