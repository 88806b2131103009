"""Rollback: removing one edit among 10 … 10,000 active ones, rolling back to a version, and
restoring a full weight snapshot (what a system without per-edit records must do)."""

from __future__ import annotations

import random
import statistics

import torch

from editor_core.combination import ActiveEdit
from editor_core.delta import EditDelta

from .timing import ms
from .workload import Workload


def remove_one(w: Workload, sizes: tuple[int, ...], removals: int) -> list[dict]:
    """Per number of active edits: the median time to remove one (the live weights
    rewritten included), to roll back the newest 10 (5 of 10) as one change, and to copy a
    full snapshot of the editable weights back."""
    deltas = w.deltas(max(sizes))
    return [_remove_one_at(w, deltas, size, removals) for size in sizes]


def _remove_one_at(w: Workload, deltas: list[EditDelta], size: int, removals: int) -> dict:
    ledger = w.stack().ledger
    edits = [ActiveEdit(f"e{i}", i + 1, deltas[i]) for i in range(size)]
    load_ms = ms(lambda: ledger.load(edits, size))
    newest = min(10, size // 2)  # rolled back to a version at the end
    victims = random.Random(size).sample(range(size - newest),
                                         min(removals, size - newest))
    remove_ms = statistics.median(ms(lambda v=v: ledger.remove(f"e{v}")) for v in victims)
    to_version_ms = ms(lambda: ledger.remove_after(size - newest))
    params = dict(w.model.named_parameters())
    snapshot = {e.name: params[e.name].detach().clone() for e in ledger.editable}

    @torch.no_grad()
    def restore_snapshot() -> None:
        for name, saved in snapshot.items():
            params[name].copy_(saved)

    snapshot_ms = statistics.median(ms(restore_snapshot) for _ in range(5))
    ledger.reset()
    return {"active": size, "remove_one_ms": remove_ms,
            "rolled_back_newest": newest, "rollback_to_version_ms": to_version_ms,
            "restore_snapshot_ms": snapshot_ms, "build_from_active_set_ms": load_ms}
