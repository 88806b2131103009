"""How the active edits combine into one ΔW per editable weight.

``SumCombiner``: ΔW = Σ ΔW_i. Cheap and exact to undo, but independently computed deltas
interfere as they accumulate, and by a hundred edits the model collapses.

``RidgeCombiner``: the joint least-squares combination of every active edit. Each edit i
brings keys K_i (the layer's inputs at the tokens of its plain prompt and target) and values
V_i = K_i ΔW_i (the output shift its own ΔW makes there). The combined ΔW is the ridge
solution over all of them,

    ΔW = argmin_Δ Σ_i ‖K_i Δ − V_i‖² + λ‖Δ‖²  =  (Σ K_iᵀK_i + λI)⁻¹ Σ K_iᵀV_i,

so each edit keeps its effect where it acts, edits that touch the same inputs share the
change instead of adding up, and directions no edit uses stay untouched. The two sums are
kept in float64, and so are P = (Σ KᵢᵀKᵢ + λI)⁻¹ and ΔW: adding or removing an edit with
n keys is the recursive-least-squares (Woodbury) update

    U = P Kᵀ,  M = ±I + K U,  ΔW ← ΔW + U M⁻¹ (V − K ΔW),  P ← P − U M⁻¹ Uᵀ,

O(d_in² n) instead of a fresh O(d_in³) solve; every ``refresh_every`` changes P and ΔW are
recomputed exactly from the sums (Cholesky), so rounding never accumulates. The result
depends only on the set of active edits, not their order; with no edit active ΔW is
exactly zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

from .delta import EditDelta
from .specs import EditableWeight


@dataclass(frozen=True)
class ActiveEdit:
    edit_id: str
    version: int
    delta: EditDelta


class DeltaCombiner(Protocol):
    """How active edits combine into one ΔW per weight (in the stored orientation)."""

    requires_keys: bool

    def add(self, edit: ActiveEdit) -> None: ...
    def remove(self, edit: ActiveEdit) -> None: ...
    def recompute(self, active: list[ActiveEdit]) -> None: ...
    def total(self, name: str) -> torch.Tensor | None: ...


class SumCombiner:
    """ΔW = Σ ΔW_i, kept as a running float64 sum per weight."""

    requires_keys = False

    def __init__(self, editable: list[EditableWeight]) -> None:
        self._editable = {w.name: w for w in editable}
        self._sum: dict[str, torch.Tensor | None] = {w.name: None for w in editable}
        self._count = 0

    def _stored(self, name: str, delta: EditDelta) -> torch.Tensor:
        return self._editable[name].to_stored(delta.factors[name].dense(torch.float64))

    def add(self, edit: ActiveEdit) -> None:
        new = {name: self._stored(name, edit.delta) for name in self._sum}  # all, then commit
        for name, d in new.items():
            self._sum[name] = d if self._sum[name] is None else self._sum[name] + d
        self._count += 1

    def remove(self, edit: ActiveEdit) -> None:
        self._count -= 1
        for name in self._sum:
            if self._count == 0:
                self._sum[name] = None  # nothing active: exactly zero, not a rounding residue
            else:
                self._sum[name] = self._sum[name] - self._stored(name, edit.delta)

    def recompute(self, active: list[ActiveEdit]) -> None:
        self._sum = {name: None for name in self._sum}
        self._count = 0
        for edit in active:
            self.add(edit)

    def total(self, name: str) -> torch.Tensor | None:
        return self._sum[name]


def keys_and_values(delta: EditDelta, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """An edit's keys K [n, d_in] and values V = K ΔW [n, d_out] for one weight (float64).

    Computed from the stored factors (``V = step · (K uᵀ) d``), never a dense ΔW.
    """
    f = delta.factors[name]
    keys = delta.key_matrix(name).to(torch.float64)
    values = (keys @ f.u.to(torch.float64).T) @ f.d.to(torch.float64) * f.step
    return keys, values


class RidgeCombiner:
    """ΔW = (Σ KᵢᵀKᵢ + λI)⁻¹ Σ KᵢᵀVᵢ per weight, with ``lam`` per weight name (or one for all)."""

    requires_keys = True

    def __init__(self, editable: list[EditableWeight], lam: float | Mapping[str, float],
                 refresh_every: int = 256) -> None:
        self._editable = {w.name: w for w in editable}
        self.lam = {w.name: float(lam if isinstance(lam, (int, float)) else lam[w.name])
                    for w in editable}
        if any(v <= 0 for v in self.lam.values()):
            raise ValueError("the ridge λ must be positive (it keeps the solve well posed)")
        self.refresh_every = refresh_every
        self._gram: dict[str, torch.Tensor | None] = {w.name: None for w in editable}
        self._cross: dict[str, torch.Tensor | None] = {w.name: None for w in editable}
        self._inverse: dict[str, torch.Tensor | None] = {w.name: None for w in editable}
        self._delta: dict[str, torch.Tensor | None] = {w.name: None for w in editable}
        self._total: dict[str, torch.Tensor | None] = {w.name: None for w in editable}
        self._count = 0
        self._since_refresh = 0

    def _change(self, edit: ActiveEdit, sign: float) -> None:
        parts = {name: keys_and_values(edit.delta, name) for name in self._gram}  # all first
        self._count += int(sign)
        self._since_refresh += 1
        exact = self._count == 0 or self._since_refresh >= self.refresh_every or any(
            d is None for d in self._delta.values())
        for name, (k, v) in parts.items():
            self._accumulate(name, k, v, sign)
        if not exact:
            try:
                for name, (k, v) in parts.items():
                    self._rank_update(name, k, v, sign)
            except RuntimeError:  # a numerically singular update: solve exactly instead
                exact = True
        if exact:
            self._refresh()
        self._publish()

    def _accumulate(self, name: str, k: torch.Tensor, v: torch.Tensor, sign: float) -> None:
        """Σ KᵀK and Σ KᵀV, in place: d_in × d_in float64 matrices, where memory traffic
        is the cost."""
        if self._gram[name] is None:
            w = self._editable[name]
            self._gram[name] = torch.zeros(w.d_in, w.d_in, dtype=torch.float64)
            self._cross[name] = torch.zeros(w.d_in, w.d_out, dtype=torch.float64)
        self._gram[name].addmm_(k.T, k, alpha=sign)
        self._cross[name].addmm_(k.T, v, alpha=sign)

    def _publish(self) -> None:
        for name, w in self._editable.items():
            delta = self._delta[name]
            self._total[name] = None if delta is None else w.to_stored(delta)

    def _rank_update(self, name: str, k: torch.Tensor, v: torch.Tensor, sign: float) -> None:
        p, delta = self._inverse[name], self._delta[name]
        u = (k @ p).T  # = P Kᵀ, as P is symmetric; row-major P makes this the fast product
        m = k @ u
        m.diagonal().add_(sign)
        gain = torch.linalg.solve(m, torch.cat([v - k @ delta, u.T], dim=1))
        delta.addmm_(u, gain[:, :delta.shape[1]])
        p.addmm_(u, gain[:, delta.shape[1]:], alpha=-1.0)

    def _refresh(self) -> None:
        """P and ΔW exactly from the sums (or zero, with nothing active)."""
        self._since_refresh = 0
        for name in self._editable:
            if self._count == 0:  # nothing active: exactly zero, not a rounding residue
                self._gram[name] = self._cross[name] = None
                self._inverse[name] = self._delta[name] = None
                continue
            gram = self._gram[name]
            system = gram + self.lam[name] * torch.eye(gram.shape[0], dtype=gram.dtype)
            inverse = torch.cholesky_inverse(torch.linalg.cholesky(system)).contiguous()
            self._inverse[name] = inverse
            self._delta[name] = inverse @ self._cross[name]

    def add(self, edit: ActiveEdit) -> None:
        self._change(edit, 1.0)

    def remove(self, edit: ActiveEdit) -> None:
        self._change(edit, -1.0)

    def recompute(self, active: list[ActiveEdit]) -> None:
        self._gram = {name: None for name in self._gram}
        self._cross = {name: None for name in self._cross}
        self._count = len(active)
        for edit in active:
            for name in self._gram:
                self._accumulate(name, *keys_and_values(edit.delta, name), 1.0)
        self._refresh()
        self._publish()

    def total(self, name: str) -> torch.Tensor | None:
        return self._total[name]


@dataclass(frozen=True)
class CombinationConfig:
    """Which combination an editor was trained for; saved in its checkpoint."""

    kind: str = "sum"  # "sum" or "ridge"
    lam: Mapping[str, float] | float | None = None  # ridge only: λ per weight (or one)

    def __post_init__(self) -> None:
        if self.kind not in ("sum", "ridge"):
            raise ValueError(f"unknown combination {self.kind!r}; use 'sum' or 'ridge'")
        if self.kind == "ridge" and self.lam is None:
            raise ValueError("a ridge combination needs λ")

    @property
    def needs_keys(self) -> bool:
        return self.kind == "ridge"

    def combiner(self, editable: list[EditableWeight]) -> DeltaCombiner:
        if self.kind == "ridge":
            return RidgeCombiner(editable, self.lam)
        return SumCombiner(editable)

    def to_json(self) -> dict:
        lam = dict(self.lam) if isinstance(self.lam, Mapping) else self.lam
        return {"kind": self.kind, "lam": lam}
