"""The weight ledger: live weights = cast(W0 − ΔW(active edits)), with exact removal.

The ledger keeps an fp32 copy of the pristine editable weights and every active edit's
factors. How the active edits act is a pluggable rule (``combination.DeltaCombiner``): the
edit memory (``memory.EditMemory``, the service's default) keeps the weights pristine and
routes each edit to the sequences it is about; the merged rules, the plain sum or a ridge
solve over all active edits' keys and values, write one ΔW per weight. The merged rules keep
their running sums exactly (fixed point), so adding or removing one edit costs a low-rank
update, never a pass over all active edits, and the weights that result depend on the set of
active edits and the change versions alone: replicas that apply the same log hold the same
weights bit for bit. Removing every edit writes the pristine copy back, bit for bit;
``load`` rebuilds from a given active set.

Every change (an edit applied, one or more removed) gets the next **version**, the number
that names a state of the live weights. Readers (generation, computing the next edit) hold
``reading()``; the ledger writes new weights and their version together under the matching
write lock, so a reader sees every weight before a change or every weight after it, never a
mix, and the version it reads is the one that produced what it saw. A failed ``apply``
changes nothing.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable
from contextlib import AbstractContextManager

import torch
from readerwriterlock import rwlock
from torch import nn

from .combination import ActiveEdit, DeltaCombiner, SumCombiner
from .delta import EditDelta
from .specs import EditableWeight

__all__ = ["ActiveEdit", "DeltaCombiner", "LedgerError", "SumCombiner", "WeightLedger"]


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """One check over many tensors (a replica validates thousands of stored edits)."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t.reshape(-1))
    return all(bool(torch.isfinite(torch.cat(ts)).all()) for ts in by_dtype.values())


class LedgerError(Exception):
    """An unknown or duplicate edit id, a stale version, or a delta that does not fit."""


class WeightLedger:
    """Applies and removes edits on a live model (and on any fp32 mirrors of it).

    ``mirrors`` are copies of the model that must carry the same edits in fp32, such as the
    editor's fp32 editing replica of a half-precision model (see ``for_editor``).
    """

    def __init__(self, model: nn.Module, editable: list[EditableWeight],
                 combiner: DeltaCombiner | None = None,
                 mirrors: Iterable[nn.Module] = ()) -> None:
        self.editable = list(editable)
        self._shapes = {w.name: (w.d_in, w.d_out) for w in self.editable}
        params = dict(model.named_parameters())
        self._params = {w.name: params[w.name] for w in self.editable}
        self._mirrors = [{w.name: dict(m.named_parameters())[w.name] for w in self.editable}
                         for m in mirrors]
        self._pristine = {n: p.detach().to(torch.float32, copy=True).cpu()
                          for n, p in self._params.items()}
        self.combiner: DeltaCombiner = (combiner if combiner is not None
                                         else SumCombiner(self.editable))
        self._active: OrderedDict[str, ActiveEdit] = OrderedDict()
        self._version = 0
        self._pristine_live = False  # whether the live weights are known to be pristine
        self._writes = 0  # weight rewrites so far: what a cached digest is valid for
        self._digest: tuple[int, str] | None = None
        self._lock = threading.RLock()  # serialises ledger changes
        self._rw = rwlock.RWLockWrite()  # readers of the weights vs the weight writer

    @classmethod
    def for_editor(cls, editor, combiner: DeltaCombiner | None = None) -> WeightLedger:
        """A ledger for the editor's model that keeps its fp32 editing replica in step and
        combines edits as the editor was trained to (unless ``combiner`` says otherwise)."""
        mirrors = [editor.edit_model] if editor.follows_live_weights else []
        combiner = combiner if combiner is not None else editor.combination.combiner(
            editor.editable)
        return cls(editor.model, editor.editable, combiner, mirrors)

    def reading(self) -> AbstractContextManager:
        """Hold while reading the weights (generating, computing an edit)."""
        return self._rw.gen_rlock()

    # -- state ---------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """The version of the live weights: that of the newest change (0 before any)."""
        return self._version

    @property
    def active(self) -> list[ActiveEdit]:
        with self._lock:
            return list(self._active.values())

    def __contains__(self, edit_id: object) -> bool:
        return edit_id in self._active

    def __len__(self) -> int:
        return len(self._active)

    # -- changes -------------------------------------------------------------------------
    def _next_version(self, version: int | None) -> int:
        if version is None:
            return self._version + 1
        if version <= self._version:
            raise LedgerError(f"version {version} is not newer than {self._version}")
        return version

    def apply(self, edit_id: str, delta: EditDelta, version: int | None = None,
              replaces: Iterable[str] = ()) -> int:
        """Add one edit's delta to the live weights; returns its version.

        ``version`` lets a caller that numbers changes itself (a stored log) keep its
        numbers; it must be newer than the ledger's version. ``replaces`` names active
        edits the new one supersedes: they leave in the same change (readers never see
        both, or neither).
        """
        self.validate(delta)
        with self._lock:
            if edit_id in self._active:
                raise LedgerError(f"edit {edit_id!r} is already active")
            replaced = list(replaces)
            missing = [r for r in replaced if r not in self._active]
            if missing:
                raise LedgerError(f"edits {missing} are not active")
            edit = ActiveEdit(edit_id, self._next_version(version), delta)
            for old in replaced:
                self.combiner.remove(self._active.pop(old))
            self._active[edit_id] = edit
            self.combiner.add(edit)
            self.combiner.settle(edit.version)
            self._write(edit.version)
            return edit.version

    def validate(self, delta: EditDelta) -> None:
        """Refuse a delta that does not fit (LedgerError), before anything changes; callers
        that persist an edit first check it here so a stored edit always applies."""
        if delta.n_requests != 1:
            raise LedgerError("apply each request of a batch on its own (EditDelta.split())")
        if set(delta.factors) != set(self._params):
            raise LedgerError(f"delta edits {sorted(delta.factors)}, the ledger manages "
                              f"{sorted(self._params)}")
        for name, f in delta.factors.items():
            d_in, d_out = self._shapes[name]
            if f.u.dim() != 2 or f.d.dim() != 2 or f.u.shape[0] != f.d.shape[0] or (
                    f.u.shape[1], f.d.shape[1]) != (d_in, d_out):
                raise LedgerError(f"factors of {name} are {tuple(f.u.shape)} and "
                                  f"{tuple(f.d.shape)}; expected (rows, {d_in}) and "
                                  f"(rows, {d_out})")
            if not math.isfinite(float(f.step)):
                raise LedgerError(f"the step size of {name} is not finite")
        if not _all_finite([t for f in delta.factors.values() for t in (f.u, f.d)]):
            bad = [n for n, f in delta.factors.items() if not _all_finite([f.u, f.d])]
            raise LedgerError(f"factors of {', '.join(bad)} are not finite")
        try:
            self.combiner.validate(delta)
        except ValueError as exc:
            raise LedgerError(str(exc)) from None

    def remove(self, edit_id: str, version: int | None = None) -> ActiveEdit:
        """Take one edit out exactly (the others stay), as change ``version``."""
        return self.remove_many([edit_id], version)[0]

    def remove_many(self, edit_ids: Iterable[str], version: int | None = None
                    ) -> list[ActiveEdit]:
        """Take several edits out as one change (a log's rollback of a range)."""
        with self._lock:
            ids = list(edit_ids)
            missing = [i for i in ids if i not in self._active]
            if missing or not ids:
                raise LedgerError(f"edits {missing} are not active" if missing
                                  else "nothing to remove")
            new_version = self._next_version(version)
            removed = [self._active.pop(i) for i in ids]
            for edit in removed:
                self.combiner.remove(edit)
            self.combiner.settle(new_version)
            self._write(new_version)
            return removed

    def remove_after(self, after: int, version: int | None = None) -> list[ActiveEdit]:
        """Take out every edit applied after version ``after``, as one change; returns
        them, newest first."""
        with self._lock:
            doomed = [e for e in reversed(self._active.values()) if e.version > after]
            if doomed:
                new_version = self._next_version(version)
                for edit in doomed:
                    del self._active[edit.edit_id]
                    self.combiner.remove(edit)
                self.combiner.settle(new_version)
                self._write(new_version)
            return doomed

    def load(self, active: Iterable[ActiveEdit], version: int,
             state: dict[str, torch.Tensor] | None = None) -> None:
        """Replace every active edit by ``active`` (each at its own version) and take
        ``version``: a replica's starting point, a snapshot of a log taken at ``version``.
        The combination is solved from scratch, or from ``state`` — what
        ``combiner.exact_state()`` gave for this same set — which spares rebuilding it from
        every edit. Either way the weights are a function of the set alone."""
        edits = list(active)
        for edit in edits:
            self.validate(edit.delta)
        with self._lock:
            self._active = OrderedDict((e.edit_id, e)
                                       for e in sorted(edits, key=lambda e: e.version))
            if not state:
                self.combiner.recompute(list(self._active.values()))
            else:
                self.combiner.restore(state)
            self._write(version)

    def reset(self) -> None:
        """Remove every edit: the pristine weights, bit for bit (a new version)."""
        with self._lock:
            self._active.clear()
            self.combiner.recompute([])
            self._write(self._version + 1)

    @torch.no_grad()
    def _write(self, version: int) -> None:
        """Build every new weight, then swap them all in, with their version, under the
        write lock."""
        live = {}
        for name in self._params:
            total = self.combiner.total(name)
            pristine = self._pristine[name]
            live[name] = pristine if total is None else (
                pristine.to(torch.float64) - total).to(torch.float32)
        rewrite = not (self._pristine_live and all(v is self._pristine[n]
                                                   for n, v in live.items()))
        with self._rw.gen_wlock():
            if rewrite:  # an edit memory keeps the weights pristine: nothing to copy
                for name, param in self._params.items():
                    param.copy_(live[name].to(device=param.device, dtype=param.dtype))
                    for mirror in self._mirrors:
                        mirror[name].copy_(live[name].to(mirror[name].device))
            self._pristine_live = all(v is self._pristine[n] for n, v in live.items())
            self.combiner.publish()
            self._version = version
            self._writes += 1

    # -- identity ------------------------------------------------------------------------
    def live_digest(self) -> str:
        """sha256 of the live editable weights as stored: equal digests, equal weights.
        Hashed once per rewrite of the weights, not per call."""
        with self._lock, self.reading():
            if self._digest is None or self._digest[0] != self._writes:
                h = hashlib.sha256()
                for name, param in self._params.items():
                    h.update(name.encode())
                    h.update(param.detach().cpu().reshape(-1).view(torch.uint8).numpy()
                             .tobytes())
                routed = getattr(self.combiner, "state_digest", lambda: "")()
                if routed:  # an edit memory's active entries are part of the live state
                    h.update(routed.encode())
                self._digest = (self._writes, h.hexdigest())
            return self._digest[1]
