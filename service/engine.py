"""The edit engine: the editor computes, the store persists, the ledger applies.

Edits and rollbacks run one at a time (an asyncio lock); model work runs in a worker thread
so the event loop keeps answering. The order inside an edit is what makes a failure lose
nothing: the delta is computed and validated against the ledger first, then stored in one
atomic Redis step (which assigns its version), and only then applied to the live weights
at that version. If anything before the store step fails, neither the store nor the
weights changed; once stored, the edit is applied here or, after a crash, by ``replay``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from editor_core.delta import EditDelta
from editor_core.editor import EditRequest, Editor
from editor_core.ledger import WeightLedger

from .store import AddResult, EditStore, StoredEdit


class EditEngine:
    """One live model's edits: create, roll back, and rebuild from the store at startup."""

    def __init__(self, editor: Editor, ledger: WeightLedger, store: EditStore) -> None:
        self.editor = editor
        self.ledger = ledger
        self.store = store
        self._lock = asyncio.Lock()

    async def replay(self) -> int:
        """Apply every active stored edit at its stored version; returns how many."""
        async with self._lock:
            active = await self.store.active()
            for edit_id, version in active:
                delta = EditDelta.from_bytes(await self.store.delta(edit_id))
                await asyncio.to_thread(self.ledger.apply, edit_id, delta, version)
            return len(active)

    async def create(self, request: EditRequest, record: dict[str, Any], *,
                     idempotency_key: str | None = None) -> AddResult:
        """Compute, store and apply one edit; an idempotency key seen before returns the
        edit it created, without computing or applying anything."""
        async with self._lock:
            if idempotency_key is not None:
                existing = await self.store.find_idempotent(idempotency_key)
                if existing is not None:
                    return AddResult(existing, created=False)
            delta = await asyncio.to_thread(self._compute, request)
            result = await self.store.add(record, delta.to_bytes(),
                                          idempotency_key=idempotency_key)
            if result.created:
                await asyncio.to_thread(self.ledger.apply, result.edit.id, delta,
                                        result.edit.version)
            return result

    def _compute(self, request: EditRequest) -> EditDelta:
        delta = self.editor.compute(request).compressed()
        self.ledger.validate(delta)
        return delta

    async def rollback(self, edit_id: str, *, by: str, at: str) -> StoredEdit:
        """Take one edit out of the store's active set and out of the live weights."""
        async with self._lock:
            edit = await self.store.rollback(edit_id, by=by, at=at)
            await asyncio.to_thread(self.ledger.remove, edit_id)
            return edit

    async def rollback_after(self, version: int, *, by: str, at: str) -> list[str]:
        """Roll back every active edit newer than ``version``; their ids, newest first."""
        async with self._lock:
            ids = await self.store.rollback_after(version, by=by, at=at)
            for edit_id in ids:
                await asyncio.to_thread(self.ledger.remove, edit_id)
            return ids
