"""The edit log as server-sent events: every change any client (on any replica) makes, as
soon as it is stored, so a console or another client keeps its view current without
polling.

``GET /events`` (read scope) answers ``text/event-stream``: first a ``ready`` event with
data ``{"version": <the store's newest version>}``, then one event per log entry, named
after it (``apply`` or ``rollback``), whose SSE ``id`` is the entry's stream id and whose
data is ``{"edit_id", "version", "superseded_by"}`` (``superseded_by``: the edit whose
application rolled this one back, else null). Events of one change share its version. A
client that reconnects with ``Last-Event-ID`` resumes right after that entry, missing
nothing. If Redis stops answering, an ``error`` event ends the stream (reconnect to resume).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

from redis.exceptions import RedisError

from ..errors import ServiceError
from ..lifecycle import LiveService
from ..schemas import ErrorBody, ErrorOut

_STREAM_ID = re.compile(r"\d{1,20}-\d{1,20}")
_WAIT_MS = 5000  # one blocking read of the log; a client that left is noticed between them


class EditLogHandler:
    """Follows the store's edit log for a client."""

    def __init__(self, live: LiveService) -> None:
        self.live = live

    def events(self, last_event_id: str | None) -> AsyncIterator[dict]:
        """The log's events after ``last_event_id`` (from now on when None); 422 for an id
        this stream could not have sent."""
        if last_event_id is not None and not _STREAM_ID.fullmatch(last_event_id):
            raise ServiceError(422, "invalid_last_event_id", "Last-Event-ID must be the id of "
                               "an event this stream sent (a Redis stream id such as 1-0)",
                               {"last_event_id": last_event_id[:64]})
        return self._follow(last_event_id)

    async def _follow(self, after: str | None) -> AsyncIterator[dict]:
        store = self.live.store
        try:
            version = await store.version()
            if after is None:  # from now on: the log's entry of the newest version
                after = await store.log_position(version)
            yield {"event": "ready", "data": json.dumps({"version": version})}
            while True:
                if not await store.wait_for_events(after, _WAIT_MS):
                    continue
                for event_id, fields in await store.events(after):
                    yield {"event": fields["event"], "id": event_id, "data": json.dumps({
                        "edit_id": fields["id"], "version": int(fields["version"]),
                        "superseded_by": fields.get("superseded_by")})}
                    after = event_id
        except RedisError as exc:  # after the first byte, an error can only be an event
            error = ErrorOut(error=ErrorBody(
                code="store_unavailable", message="the edit store (Redis) does not answer; "
                "reconnect with Last-Event-ID to resume", details={"type": type(exc).__name__}))
            self.live.metrics.errors.labels("store_unavailable").inc()  # as every error
            yield {"event": "error", "data": error.model_dump_json()}
