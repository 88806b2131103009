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

It is left out of the OpenAPI schema: a stream that never ends is no request-response
operation, and schema-driven clients and fuzzers would wait on it forever.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse

from ..auth import Principal, require
from ..errors import ServiceError
from ..lifecycle import LiveService
from ..store import EditStore
from .deps import live_service

router = APIRouter(tags=["edits"])
Live = Annotated[LiveService, Depends(live_service)]
Reader = Annotated[Principal, Depends(require("read"))]

_STREAM_ID = re.compile(r"\d{1,20}-\d{1,20}")
_WAIT_MS = 5000  # one blocking read of the log; a client that left is noticed between them


@router.get("/events", include_in_schema=False)
async def events(live: Live, _: Reader,
                 last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None
                 ) -> EventSourceResponse:
    """The edit log as it grows (see the module's docstring for the event format)."""
    if last_event_id is not None and not _STREAM_ID.fullmatch(last_event_id):
        raise ServiceError(422, "invalid_last_event_id", "Last-Event-ID must be the id of an "
                           "event this stream sent (a Redis stream id such as 1-0)",
                           {"last_event_id": last_event_id[:64]})
    return EventSourceResponse(_log_events(live.engine.store, last_event_id), ping=15)


async def _log_events(store: EditStore, after: str | None) -> AsyncIterator[dict]:
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
        error = {"code": "store_unavailable", "message": "the edit store (Redis) does not "
                 "answer; reconnect with Last-Event-ID to resume", "details": {
                     "type": type(exc).__name__}}
        yield {"event": "error", "data": json.dumps({"error": error})}
