"""The edit memory: edits kept unmerged, as entries a routing runtime sends each sequence to.

Merging thousands of independently computed deltas into the same few weights makes them
interfere (``bench/stream-heldout.md``: the merged sum and ridge fade as edits accumulate).
The memory keeps the live weights pristine and every active edit as an **entry**: its
stored low-rank factors and its **routing key** — the input of the gate module (the first
edited weight) at the last token of the edit's plain prompt (and of each rephrase the
request gave), computed on the pristine model when the edit is made — plus the token ids of
its subject (and the subject's aliases).

This module holds the entries and the **index** routing reads; ``routing.MemoryRouting``
is the runtime that routes a model's forward passes through a memory (the rules are
there), and ``routing_keys`` how keys are taken. The memory is a function of the active set
alone: removing an entry gives exactly the memory built without it, and an empty memory is
the pristine model.

The memory plugs into the ``WeightLedger`` as its combination (``total`` is always None: no
weight is rewritten). A change is published under the ledger's write lock; each routing
session reads the index published when it began, so a generation sees one state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .delta import ActiveEdit, EditDelta
from .routing_config import RoutingConfig
from .specs import EditableWeight

__all__ = ["EMPTY_INDEX", "EditMemory", "MemoryEntry", "MemoryIndex"]


@dataclass(frozen=True)
class MemoryEntry:
    """One active edit as the memory uses it."""

    edit_id: str
    keys: torch.Tensor  # [k, d] routing keys in the key space (RoutingConfig), unit-norm
    subjects: tuple[tuple[int, ...], ...]  # token-id sequences; empty: no subject
    factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]]  # module → (u, d, step)
    answers: tuple[tuple[int, ...], ...] = ()  # accepted answers' token ids (RoutingKey)
    ends: tuple[int, ...] = ()  # tokens that end its line
    contrast: torch.Tensor | None = None  # [c, d] key space: other questions of its subject


@dataclass(frozen=True)
class MemoryIndex:
    """An immutable view of the memory that one routing session reads."""

    entries: dict[str, MemoryEntry]
    by_last_token: dict[int, tuple[tuple[str, tuple[int, ...]], ...]]
    subjectless: tuple[str, ...]
    subjectless_keys: torch.Tensor | None  # [n, d] stacked keys of subjectless entries
    subjectless_owner: tuple[str, ...]  # entry id of each stacked key row

    def with_entries(self, extra: Sequence[MemoryEntry]) -> MemoryIndex:
        """This index with ``extra`` entries beside (a trial: nothing is published)."""
        entries, by_last = dict(self.entries), dict(self.by_last_token)
        subjectless = list(self.subjectless)
        keys = [] if self.subjectless_keys is None else [self.subjectless_keys]
        owner = list(self.subjectless_owner)
        for entry in extra:
            entries[entry.edit_id] = entry
            for ids in entry.subjects:
                by_last[ids[-1]] = (*by_last.get(ids[-1], ()), (entry.edit_id, ids))
            if not entry.subjects:
                subjectless.append(entry.edit_id)
                keys.append(entry.keys)
                owner += [entry.edit_id] * entry.keys.shape[0]
        return MemoryIndex(entries, by_last, tuple(subjectless),
                           torch.cat(keys) if keys else None, tuple(owner))


EMPTY_INDEX = MemoryIndex({}, {}, (), None, ())


class EditMemory:
    """The active edits as routed entries (a ``DeltaCombiner`` that never rewrites weights)."""

    snapshots = False  # rebuilt from the stored edits alone, nothing to save
    routed = True  # edits act through routing; the served weights stay pristine

    def __init__(self, editable: list[EditableWeight], config: RoutingConfig) -> None:
        self.editable = list(editable)
        self.config = config
        self.modules = {w.name: w.module_name for w in self.editable}
        self._entries: dict[str, MemoryEntry] = {}
        # kept in step with the entries, so publishing copies references, never rebuilds
        self._by_last: dict[int, tuple[tuple[str, tuple[int, ...]], ...]] = {}
        self._subjectless: dict[str, torch.Tensor] = {}
        self.index = EMPTY_INDEX  # the published index (replaced whole, never changed)

    # -- the combiner protocol (the ledger calls these under its change lock) -------------
    def add(self, edit: ActiveEdit) -> None:
        self._insert(self.entry(edit.edit_id, edit.delta))

    def remove(self, edit: ActiveEdit) -> None:
        self._drop(edit.edit_id)

    def _drop(self, edit_id: str) -> None:
        entry = self._entries.pop(edit_id)
        self._subjectless.pop(entry.edit_id, None)
        for last in {ids[-1] for ids in entry.subjects}:  # several names may end alike
            kept = tuple(c for c in self._by_last[last] if c[0] != entry.edit_id)
            if kept:
                self._by_last[last] = kept
            else:
                del self._by_last[last]

    def _insert(self, entry: MemoryEntry) -> None:
        if entry.edit_id in self._entries:
            self._drop(entry.edit_id)
        self._entries[entry.edit_id] = entry
        if not entry.subjects:
            self._subjectless[entry.edit_id] = entry.keys
        for ids in entry.subjects:  # tuples are replaced, never changed: snapshots stay
            self._by_last[ids[-1]] = (*self._by_last.get(ids[-1], ()), (entry.edit_id, ids))

    def settle(self, version: int) -> None:
        """Nothing to solve: the memory is its set of entries."""

    def exact_version(self, version: int) -> int:
        return version  # every state is a function of the active set

    def exact_state(self) -> dict[str, torch.Tensor]:
        return {}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError("the edit memory is rebuilt from its active edits")

    def recompute(self, active: list[ActiveEdit]) -> None:
        self._entries, self._by_last, self._subjectless = {}, {}, {}
        for e in active:
            self._insert(self.entry(e.edit_id, e.delta))

    def total(self, name: str) -> torch.Tensor | None:
        return None  # the weights stay pristine

    def publish(self) -> None:
        """Make the current entries the index new routing sessions read (the ledger calls
        this under its write lock, with the version). Costs a copy of references: cheap at
        100,000 entries."""
        subjectless = tuple(sorted(self._subjectless))
        keys = [self._subjectless[i] for i in subjectless]
        owner = tuple(i for i in subjectless for _ in range(self._subjectless[i].shape[0]))
        self.index = MemoryIndex(dict(self._entries), dict(self._by_last), subjectless,
                                 torch.cat(keys) if keys else None, owner)

    def state_digest(self) -> str:
        """Names the active set ('' when empty): part of the ledger's live digest."""
        if not self._entries:
            return ""
        return hashlib.sha256("\n".join(sorted(self._entries)).encode()).hexdigest()

    # -- entries --------------------------------------------------------------------------
    def validate(self, delta: EditDelta) -> None:
        """Refuse a delta the memory cannot route (ValueError)."""
        if delta.routing is None:
            raise ValueError("the edit memory needs the edit's routing key; compute the edit "
                             "with an editor whose combination is 'memory'")
        keys = delta.routing.keys
        d = self.config.mean.shape[0] if self.config.mean is not None else keys.shape[-1]
        if keys.dim() != 2 or keys.shape[0] == 0 or keys.shape[1] != d or not torch.isfinite(
                keys).all():
            raise ValueError(f"routing keys are {tuple(keys.shape)}; expected finite (k, {d})")

    def entry(self, edit_id: str, delta: EditDelta) -> MemoryEntry:
        """``delta`` as an entry under ``edit_id`` (validated; nothing is added)."""
        self.validate(delta)
        keys = self.config.key_space(delta.routing.keys)
        # the stored tensors themselves (shared with the ledger's copy, in the stored dtype)
        factors = {self.modules[name]: (f.u, f.d, float(f.step))
                   for name, f in delta.factors.items()}
        routing = delta.routing
        contrast = None if routing.contrast is None else self.config.key_space(
            routing.contrast).contiguous()
        return MemoryEntry(edit_id, keys.contiguous(), routing.subjects, factors,
                           routing.answers, routing.ends, contrast)

    def __len__(self) -> int:
        return len(self.index.entries)
