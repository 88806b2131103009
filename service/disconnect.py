"""Work for a client that may leave: a whole (non-streamed) answer nobody will read is not
worth finishing. Streamed answers stop by themselves (their response notices)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request
from fastapi.responses import Response

T = TypeVar("T")

CLIENT_CLOSED = 499  # nginx's "client closed request": logged, never read


async def until_disconnected(request: Request, work: Awaitable[T]) -> T | Response:
    """``work``'s result, or, when the client disconnects first, ``work`` cancelled (a
    generation's sequence stops and its query slot is given back) and a 499."""
    task = asyncio.ensure_future(work)
    left = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, left), return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return Response(status_code=CLIENT_CLOSED)


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
