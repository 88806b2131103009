"""What every route needs: the live service, the caller, and checks of request sizes."""

from __future__ import annotations

import threading

from fastapi import Request

from ..errors import ServiceError
from ..lifecycle import LiveService


def live_service(request: Request) -> LiveService:
    """The live service, or 503 while it is still starting (or stopping)."""
    live: LiveService | None = getattr(request.app.state, "live", None)
    if live is None or not live.started:
        raise ServiceError(503, "not_ready", "the service is starting; retry shortly")
    return live


def check_tokens(live: LiveService, text: str, limit: int, what: str) -> int:
    """The token count of ``text``; 422 ``{what}_too_long`` above ``limit``."""
    n = len(live.tokenizer(text, add_special_tokens=False)["input_ids"])
    if n > limit:
        raise ServiceError(422, f"{what}_too_long",
                           f"the {what} is {n} tokens; at most {limit} are allowed",
                           {"tokens": n, "limit": limit})
    return n


class QuerySlots:
    """Counts running generations and scores; refuses (429) beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self._lock = threading.Lock()  # given back from worker threads too

    def take(self) -> None:
        with self._lock:
            if self.running >= self.limit:
                raise ServiceError(429, "busy", f"{self.running} queries are running; retry "
                                   "shortly", {"running": self.running})
            self.running += 1

    def give(self) -> None:
        with self._lock:
            self.running -= 1


def query_slots(request: Request) -> QuerySlots:
    return request.app.state.query_slots
