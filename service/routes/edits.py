"""Edits: create (one or a batch), list, read, and roll back."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Response

from editor_core.editor import EditRequest
from editor_core.instructions import InstructionError

from ..auth import Principal, require
from ..engine import EditSpec
from ..errors import ServiceError
from ..lifecycle import LiveService
from ..schemas import (
    EditBatchIn,
    EditBatchOut,
    EditIn,
    EditOut,
    EditPageOut,
    RollbackToIn,
    RollbackToOut,
)
from ..store import AddResult, StoredEdit
from .deps import check_tokens, live_service

router = APIRouter(tags=["edits"])
Live = Annotated[LiveService, Depends(live_service)]
Editor = Annotated[Principal, Depends(require("edit"))]
Reader = Annotated[Principal, Depends(require("read"))]
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", max_length=255,
    description="the same key returns the edit it first created, applying nothing twice")]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def edit_out(edit: StoredEdit) -> EditOut:
    report = edit.report or {}
    return EditOut(id=edit.id, version=edit.version, status=edit.status, **edit.record,
                   timings_ms=report.get("timings_ms"), batch_size=report.get("batch_size"),
                   quality=report.get("quality"), superseded=report.get("superseded", []),
                   rolled_back_by=edit.rolled_back_by, rolled_back_at=edit.rolled_back_at,
                   rolled_back_version=edit.rolled_back_version,
                   superseded_by=edit.superseded_by)


def _spec(body: EditIn, live: LiveService, who: Principal, at: str) -> EditSpec:
    """Check one edit against the editor and the limits; what the engine and store get."""
    if body.task not in live.editor.registry:
        raise ServiceError(422, "unknown_task", f"unknown task {body.task!r}",
                           {"known": live.editor.registry.names})
    limits = live.settings.limits
    for prompt in (body.prompt, *body.rephrases, *body.locality_prompts):
        check_tokens(live, prompt, limits.max_prompt_tokens, "prompt")
    check_tokens(live, body.target, limits.max_target_tokens, "target")
    request = EditRequest(body.task, body.prompt, body.target, subject=body.subject,
                          description=body.description, sentiment=body.sentiment,
                          rephrases=tuple(body.rephrases), aliases=tuple(body.aliases))
    try:
        instruction = live.editor.edit_input(request)
    except InstructionError as exc:
        raise ServiceError(422, "invalid_edit", str(exc)) from exc
    record = {**body.model_dump(), "instruction": instruction, "created_at": at,
              "created_by": who.name}
    return EditSpec(request, record, tuple(body.rephrases), tuple(body.locality_prompts),
                    body.relation, body.check_earlier, body.accept_partial)


def _request_hash(body: EditIn | EditBatchIn) -> str:
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()


async def _create(live: LiveService, bodies: list[EditIn], who: Principal,
                  key: str | None, request_hash: str, response: Response) -> AddResult:
    at = _now()
    specs = [_spec(b, live, who, at) for b in bodies]
    claimed: dict[str, int] = {}
    for i, spec in enumerate(specs):
        for claim in spec.claims:
            if claim in claimed:
                raise ServiceError(422, "conflicting_batch", f"edits {claimed[claim]} and {i} "
                                   "of the batch set the same fact; send one of them",
                                   {"edits": [claimed[claim], i]})
            claimed[claim] = i
    result = await live.engine.create(specs, idempotency_key=key, request_hash=request_hash)
    if not result.created:
        response.headers["Idempotent-Replayed"] = "true"
    return result


@router.post("/edits", status_code=201, response_model=EditOut)
async def create_edit(body: EditIn, live: Live, who: Editor, response: Response,
                      idempotency_key: IdempotencyKey = None) -> EditOut:
    """Edit the live model. The answer carries the edit's version, the instruction used,
    how long each phase took, and its quality measured before and after."""
    result = await _create(live, [body], who, idempotency_key, _request_hash(body), response)
    return edit_out(result.edits[0])


@router.post("/edits/batch", status_code=201, response_model=EditBatchOut)
async def create_edits(body: EditBatchIn, live: Live, who: Editor, response: Response,
                       idempotency_key: IdempotencyKey = None) -> EditBatchOut:
    """Many edits in one editor pass, all or none; each is stored, versioned and rolled back
    on its own."""
    limit = live.settings.limits.max_batch_edits
    if len(body.edits) > limit:
        raise ServiceError(413, "batch_too_large", f"{len(body.edits)} edits in one batch; "
                           f"at most {limit}", {"edits": len(body.edits), "limit": limit})
    result = await _create(live, body.edits, who, idempotency_key, _request_hash(body),
                           response)
    return EditBatchOut(edits=[edit_out(e) for e in result.edits])


@router.get("/edits", response_model=EditPageOut)
async def list_edits(
    live: Live, _: Reader,
    status: Literal["active", "rolled_back"] | None = None,
    task: Annotated[str | None, Query(max_length=64)] = None,
    subject: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[int | None, Query(ge=1, description="the previous page's next_cursor")
                      ] = None,
) -> EditPageOut:
    """Edits newest first, optionally filtered; follow ``next_cursor`` for older ones."""
    page = await live.engine.store.list(before=before, limit=limit, status=status, task=task,
                                        subject=subject)
    return EditPageOut(edits=[edit_out(e) for e in page.edits], next_cursor=page.next_cursor)


@router.get("/edits/{edit_id}", response_model=EditOut)
async def get_edit(edit_id: str, live: Live, _: Reader) -> EditOut:
    return edit_out(await live.engine.store.get(edit_id))


@router.post("/edits/rollback", response_model=RollbackToOut)
async def rollback_to(body: RollbackToIn, live: Live, who: Editor) -> RollbackToOut:
    """Roll back every active edit newer than ``to_version`` (newest first)."""
    edits = await live.engine.rollback_after(body.to_version, by=who.name, at=_now())
    version = edits[0].rolled_back_version if edits else live.ledger.version
    return RollbackToOut(rolled_back=[edit_out(e) for e in edits], version=version)


@router.post("/edits/{edit_id}/rollback", response_model=EditOut)
async def rollback_edit(edit_id: str, live: Live, who: Editor) -> EditOut:
    """Remove exactly this edit's delta; the record stays, marked ``rolled_back`` with who
    and when. 409 if it already is."""
    return edit_out(await live.engine.rollback(edit_id, by=who.name, at=_now()))
