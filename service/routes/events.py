"""``GET /events``: the edit log as server-sent events (format: ``service.handlers.edit_log``).

It is left out of the OpenAPI schema: a stream that never ends is no request-response
operation, and schema-driven clients and fuzzers would wait on it forever.
"""

from __future__ import annotations

from fastapi import APIRouter
from sse_starlette import EventSourceResponse

from ..deps import EditLog, LastEventId, ReadKey

router = APIRouter(tags=["edits"])


@router.get("/events", include_in_schema=False)
async def events(log: EditLog, _: ReadKey, last_event_id: LastEventId = None
                 ) -> EventSourceResponse:
    """The edit log as it grows."""
    return EventSourceResponse(log.events(last_event_id), ping=15)
