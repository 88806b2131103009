"""Edits: build each request's record, create (one or a batch), list, read, roll back."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

from editor_core.editor import EditRequest
from editor_core.instructions import InstructionError
from editor_core.request_wordings import request_wordings

from ..auth import Principal
from ..claims import refuse_conflicts
from ..engine import Created, EditSpec, as_edit
from ..errors import ServiceError
from ..lifecycle import LiveService
from ..schemas import (
    Edit,
    EditBatchIn,
    EditIn,
    EditPageOut,
    EditRecord,
    RollbackToOut,
)
from .chat import templated
from .limits import check_tokens


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def request_hash(body: EditIn | EditBatchIn) -> str:
    """What an Idempotency-Key is bound to: the request's canonical JSON."""
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()


class EditHandler:
    """Creates, lists, reads and rolls back the live model's edits."""

    def __init__(self, live: LiveService) -> None:
        self.live = live

    def _spec(self, body: EditIn, who: Principal, at: str) -> EditSpec:
        """Check one edit against the editor and the limits; its request and record."""
        editor, limits = self.live.editor, self.live.settings.limits
        if body.messages is not None:
            body = body.model_copy(update={"prompt": self._chat_prompt(body)})
        if body.task not in editor.registry:
            raise ServiceError(422, "unknown_task", f"unknown task {body.task!r}",
                               {"known": editor.registry.names})
        for prompt in (body.prompt, *body.rephrases, *body.locality_prompts):
            check_tokens(self.live.tokenizer, prompt, limits.max_prompt_tokens, "prompt")
        check_tokens(self.live.tokenizer, body.target, limits.max_target_tokens, "target")
        # wordings the service derives are optional: one beyond the prompt limit is left out
        def fits(prompt: str) -> bool:
            return len(self.live.tokenizer(prompt, add_special_tokens=False)["input_ids"]
                       ) <= limits.max_prompt_tokens

        derived, contrast = request_wordings(editor, body.relation, body.subject,
                                             [body.prompt, *body.rephrases], keep=fits)
        request = EditRequest(body.task, body.prompt, body.target, subject=body.subject,
                              description=body.description, sentiment=body.sentiment,
                              rephrases=tuple(body.rephrases), aliases=tuple(body.aliases),
                              derived=derived, contrast=contrast, relation=body.relation)
        try:
            instruction = editor.edit_input(request)
        except InstructionError as exc:
            raise ServiceError(422, "invalid_edit", str(exc)) from exc
        record = EditRecord(**body.model_dump(), instruction=instruction, created_at=at,
                            created_by=who.name, derived_rephrases=list(derived))
        return EditSpec(request, record)

    def _chat_prompt(self, body: EditIn) -> str:
        """The prompt an edit stated as a conversation stands for: what the model reads
        when a chat user asks it."""
        if body.prompt is not None:
            raise ServiceError(422, "invalid_edit", "give the fact's prompt or its "
                               "messages, not both")
        if body.messages[-1].role != "user":
            raise ServiceError(422, "invalid_messages", "an edit's messages end with the "
                               "user's question; the target is the assistant's reply")
        return templated(self.live.tokenizer, body.messages, "send the fact as a prompt")

    async def create(self, body: EditIn | EditBatchIn, who: Principal,
                     idempotency_key: str | None) -> Created:
        """Compute, judge, store and apply one edit or a batch (all or none)."""
        bodies = body.edits if isinstance(body, EditBatchIn) else [body]
        limit = self.live.settings.limits.max_batch_edits
        if len(bodies) > limit:
            raise ServiceError(413, "batch_too_large", f"{len(bodies)} edits in one batch; "
                               f"at most {limit}", {"edits": len(bodies), "limit": limit})
        at = _now()
        specs = [self._spec(b, who, at) for b in bodies]
        refuse_conflicts([s.record for s in specs])
        return await self.live.engine.create(specs, idempotency_key=idempotency_key,
                                             request_hash=request_hash(body))

    async def page(self, *, status: str | None, task: str | None, subject: str | None,
                   limit: int, before: int | None) -> EditPageOut:
        page = await self.live.store.list(before=before, limit=limit, status=status,
                                          task=task, subject=subject)
        return EditPageOut(edits=[as_edit(e) for e in page.edits],
                           next_cursor=page.next_cursor)

    async def get(self, edit_id: str) -> Edit:
        return as_edit(await self.live.store.get(edit_id))

    async def rollback(self, edit_id: str, who: Principal) -> Edit:
        return await self.live.engine.rollback(edit_id, by=who.name, at=_now())

    async def rollback_to(self, version: int, who: Principal) -> RollbackToOut:
        edits = await self.live.engine.rollback_after(version, by=who.name, at=_now())
        now = edits[0].rolled_back_version if edits else self.live.ledger.version
        return RollbackToOut(rolled_back=edits, version=now)
