"""Whole answers for a client that left are not finished: the work is cancelled."""

from __future__ import annotations

import asyncio

from fastapi import Request

from service.disconnect import CLIENT_CLOSED, until_disconnected

SCOPE = {"type": "http", "method": "POST", "path": "/generate", "headers": []}


def test_work_for_a_client_that_left_is_cancelled_and_answered_499() -> None:
    async def main() -> None:
        gone, cancelled = asyncio.Event(), asyncio.Event()

        async def receive() -> dict:
            await gone.wait()
            return {"type": "http.disconnect"}

        async def endless() -> str:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return "never"

        answer = asyncio.ensure_future(until_disconnected(Request(SCOPE, receive), endless()))
        gone.set()
        assert (await answer).status_code == CLIENT_CLOSED
        assert cancelled.is_set()

    asyncio.run(main())


def test_work_that_finishes_first_is_answered_and_stops_listening() -> None:
    async def main() -> None:
        listening = asyncio.Event()
        released = asyncio.Event()

        async def receive() -> dict:
            listening.set()
            try:
                await asyncio.Event().wait()
            finally:
                released.set()
            return {"type": "http.disconnect"}

        async def quick() -> int:
            await listening.wait()
            return 7

        assert await until_disconnected(Request(SCOPE, receive), quick()) == 7
        await asyncio.wait_for(released.wait(), 5)

    asyncio.run(main())
