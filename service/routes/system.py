"""The service itself: liveness, readiness, what it serves, and the tasks it edits."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from editor_core.instructions import INSTRUCTION_FORMAT

from ..auth import Principal, require
from ..errors import ServiceError
from ..lifecycle import LiveService
from ..schemas import ErrorOut, InfoOut, LogOut, TaskOut
from .deps import live_service

router = APIRouter(tags=["service"])
Live = Annotated[LiveService, Depends(live_service)]
Reader = Annotated[Principal, Depends(require("read"))]


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: answers at once, even while an edit runs."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorOut}})
async def readyz(request: Request) -> JSONResponse:
    """Ready while Redis answers and the live weights hold every change in the edit log
    (503 with the reason otherwise: starting, store unavailable, catching up)."""
    live = live_service(request)
    reason = live.not_ready()
    if reason is not None:
        raise ServiceError(503, *reason, {"lag": live.engine.follower.lag})
    return JSONResponse({"status": "ready", "replayed": live.replayed,
                         "version": live.ledger.version})


@router.get("/info", response_model=InfoOut)
async def info(live: Live, _: Reader) -> InfoOut:
    """The model, the editor, and the live weights' state (digests are SHA-256 of the
    editable weights: after every edit is rolled back, ``live_digest`` equals
    ``pristine_digest``)."""
    digest = await asyncio.to_thread(live.ledger.live_digest)
    follower = live.engine.follower
    with live.ledger.reading():
        version, active = live.ledger.version, len(live.ledger)
    return InfoOut(model=live.settings.model, editor=str(live.settings.editor),
                   editable=[w.name for w in live.editor.editable],
                   device=live.settings.device, dtype=live.settings.dtype,
                   combination=live.editor.combination.to_json(),
                   edit_basis=live.editor.basis,
                   edit_version=version, active_edits=active, fingerprint=live.fingerprint,
                   live_digest=digest, pristine_digest=live.pristine_digest,
                   log=LogOut(position=follower.position, applied_version=version,
                              store_version=follower.store_version, lag=follower.lag,
                              store_up=follower.store_up))


@router.get("/tasks", response_model=list[TaskOut])
async def tasks(live: Live, _: Reader) -> list[TaskOut]:
    """The tasks the editor knows: how it wraps a prompt in each task's instruction."""
    return [TaskOut(name=t.name, title=t.title,
                    template=INSTRUCTION_FORMAT.replace("{task}", t.title),
                    default_description=t.training_descriptions()[0],
                    descriptions=t.training_descriptions())
            for t in live.editor.registry]
