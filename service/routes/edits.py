"""Edits: create (one or a batch), list, read, and roll back."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from ..deps import EditKey, Edits, IdempotencyKey, ReadKey, known_query
from ..handlers.edits import Created
from ..schemas import (
    Edit,
    EditBatchIn,
    EditBatchOut,
    EditIn,
    EditPageOut,
    RollbackToIn,
    RollbackToOut,
)

router = APIRouter(tags=["edits"])


def _replayed(created: Created, response: Response) -> list[Edit]:
    """The created edits; marks a response that replays an earlier Idempotency-Key."""
    if created.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return created.edits


@router.post("/edits", status_code=201, response_model=Edit)
async def create_edit(body: EditIn, edits: Edits, who: EditKey, response: Response,
                      idempotency_key: IdempotencyKey = None) -> Edit:
    """Edit the live model. The answer carries the edit's version, the instruction used,
    how long each phase took, and its quality measured before and after."""
    return _replayed(await edits.create(body, who, idempotency_key), response)[0]


@router.post("/edits/batch", status_code=201, response_model=EditBatchOut)
async def create_edits(body: EditBatchIn, edits: Edits, who: EditKey, response: Response,
                       idempotency_key: IdempotencyKey = None) -> EditBatchOut:
    """Many edits in one editor pass, all or none; each is stored, versioned and rolled back
    on its own."""
    return EditBatchOut(edits=_replayed(await edits.create(body, who, idempotency_key),
                                        response))


@router.get("/edits", response_model=EditPageOut, dependencies=[
    known_query("status", "task", "subject", "limit", "before")])
async def list_edits(
    edits: Edits, _: ReadKey,
    status: Literal["active", "rolled_back"] | None = None,
    task: Annotated[str | None, Query(max_length=64)] = None,
    subject: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[int | None, Query(ge=1, description="the previous page's next_cursor")
                      ] = None,
) -> EditPageOut:
    """Edits newest first, optionally filtered; follow ``next_cursor`` for older ones."""
    return await edits.page(status=status, task=task, subject=subject, limit=limit,
                            before=before)


@router.get("/edits/{edit_id}", response_model=Edit)
async def get_edit(edit_id: str, edits: Edits, _: ReadKey) -> Edit:
    return await edits.get(edit_id)


@router.post("/edits/rollback", response_model=RollbackToOut)
async def rollback_to(body: RollbackToIn, edits: Edits, who: EditKey) -> RollbackToOut:
    """Roll back every active edit newer than ``to_version`` (newest first)."""
    return await edits.rollback_to(body.to_version, who)


@router.post("/edits/{edit_id}/rollback", response_model=Edit)
async def rollback_edit(edit_id: str, edits: Edits, who: EditKey) -> Edit:
    """Remove exactly this edit's delta; the record stays, marked ``rolled_back`` with who
    and when. 409 if it already is."""
    return await edits.rollback(edit_id, who)
