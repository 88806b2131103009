"""The service itself: liveness, readiness, what it serves, and the tasks it edits."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import ReadKey, System
from ..schemas import ErrorOut, InfoOut, ReadyOut, TaskOut

router = APIRouter(tags=["service"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: answers at once, even while an edit runs."""
    return {"status": "ok"}


@router.get("/readyz", response_model=ReadyOut, responses={503: {"model": ErrorOut}})
async def readyz(system: System) -> ReadyOut:
    """Ready while Redis answers and the live weights hold every change in the edit log
    (503 with the reason otherwise: starting, store unavailable, catching up)."""
    return system.ready()


@router.get("/info", response_model=InfoOut)
async def info(system: System, _: ReadKey) -> InfoOut:
    """The model, the editor, and the live weights' state (digests are SHA-256 of the
    editable weights: after every edit is rolled back, ``live_digest`` equals
    ``pristine_digest``)."""
    return await system.info()


@router.get("/tasks", response_model=list[TaskOut])
async def tasks(system: System, _: ReadKey) -> list[TaskOut]:
    """The tasks the editor knows: how it wraps a prompt in each task's instruction."""
    return system.tasks()
