"""How the active edits combine into one ΔW per editable weight.

``SumCombiner``: ΔW = Σ ΔW_i. Cheap and exact to undo, but independently computed deltas
interfere as they accumulate, and by a hundred edits the model collapses.

``RidgeCombiner``: the joint least-squares combination of every active edit. Each edit i
brings keys K_i (the layer's inputs at the tokens of its plain prompt and target) and values
V_i = K_i ΔW_i (the output shift its own ΔW makes there). The combined ΔW is the ridge
solution over all of them,

    ΔW = argmin_Δ Σ_i ‖K_i Δ − V_i‖² + λ‖Δ‖²  =  (Σ K_iᵀK_i + λI)⁻¹ Σ K_iᵀV_i,

so each edit keeps its effect where it acts, edits that touch the same inputs share the
change instead of adding up, and directions no edit uses stay untouched. P = (Σ KᵢᵀKᵢ + λI)⁻¹
and ΔW are kept in float64; adding or removing an edit with n keys is the
recursive-least-squares (Woodbury) update

    U = P Kᵀ,  M = ±I + K U,  ΔW ← ΔW + U M⁻¹ (V − K ΔW),  P ← P − U M⁻¹ Uᵀ,

O(d_in² n) instead of a fresh O(d_in³) solve. At every change whose version is a multiple
of ``refresh_every``, P and ΔW are solved exactly (Cholesky) from the sums, so rounding never
accumulates.

**Exact sums.** Running sums are exact, so a sum is a function of the set of active edits
alone — not of the order they came and went in — removing an edit cancels it exactly, and
with nothing active the sum is exactly zero. ``SumCombiner`` keeps Σ ΔW_i as integers (each
edit's float64 ΔW rounded once onto a fine fixed-point grid; ``ExactSum``). The ridge
combiner rounds each edit's keys and values onto fixed-point grids once; then Σ KᵢᵀKᵢ and
Σ KᵢᵀVᵢ are ordinary float64 matrix products in which every partial sum is an integer
below 2⁵³ in grid units — exact in any order or grouping (``GridProducts``), so a rebuild
takes one product over all active keys. Together with refreshes at fixed versions, this
makes the live weights a deterministic function of the edit log: a replica that rebuilds
from the active set at a refresh version and then follows the log holds bit-identical
weights to one that saw every change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import torch

from .delta import ActiveEdit, EditDelta
from .memory import EditMemory
from .specs import EditableWeight
from .workers import run_all

# The ridge combination's defaults, here once: the service's settings and the commands that
# measure it start from them.
RIDGE_LAMBDA = 3.0  # λ, unless an editor was trained with its own
RIDGE_REFRESH_EVERY = 64  # versions between two exact solves (rank updates in between)


class DeltaCombiner(Protocol):
    """How active edits combine into one ΔW per weight (in the stored orientation).

    A change is any number of ``add``/``remove`` calls followed by ``settle(version)``,
    which the ledger calls once per change before it reads ``total``; ``publish`` runs
    under the ledger's write lock, as the new weights and version are swapped in.
    ``snapshots`` says whether ``exact_state`` is worth saving for replicas that start
    later (running sums that are costly to rebuild from every edit).
    """

    snapshots: bool
    routed: bool  # True: edits act through routing, and the served weights stay pristine

    def validate(self, delta: EditDelta) -> None:
        """Refuse (ValueError) a delta this combination cannot take, before any change."""
    def add(self, edit: ActiveEdit) -> None: ...
    def remove(self, edit: ActiveEdit) -> None: ...
    def settle(self, version: int) -> None: ...
    def exact_version(self, version: int) -> int: ...
    def exact_state(self) -> dict[str, torch.Tensor]: ...
    def restore(self, state: dict[str, torch.Tensor]) -> None: ...
    def recompute(self, active: list[ActiveEdit]) -> None: ...
    def total(self, name: str) -> torch.Tensor | None: ...
    def publish(self) -> None: ...


class ExactSum:
    """A sum of float64 matrices kept exactly, as int64 multiples of 2**-``scale_bits``.

    Each term is rounded once (to well below 1e-9 relative for the magnitudes here); after
    that, adding and subtracting are exact, so the sum depends only on which terms are in
    it. Overflow is refused, not wrapped.
    """

    _LIMIT = 2.0 ** 62

    def __init__(self, shape: tuple[int, int], scale_bits: int) -> None:
        self.scale = 2.0 ** scale_bits
        self._sum = torch.zeros(shape, dtype=torch.int64)
        self._bound = 0.0  # ≥ the largest |entry| of the sum: checked only when it nears overflow

    def add(self, term: torch.Tensor, sign: float = 1.0, bound: float | None = None) -> None:
        """Add (or with ``sign`` −1 subtract) ``term``, a float64 matrix this sum may scale
        in place. ``bound`` ≥ max |term| spares a pass over it when the caller knows one."""
        largest = float(term.abs().max()) if bound is None else bound
        largest = largest * self.scale if term.numel() else 0.0
        if not largest < self._LIMIT / 64:  # also refuses NaN
            raise OverflowError("a term too large for the exact sum's fixed-point grid")
        if self._bound + largest >= self._LIMIT:
            self._bound = float(self._sum.abs().max())
            if self._bound + largest >= self._LIMIT:
                raise OverflowError("the exact sum would leave its fixed-point range")
        fixed = term.mul_(self.scale).round_().to(torch.int64)
        if sign > 0:
            self._sum.add_(fixed)
        else:
            self._sum.sub_(fixed)
        self._bound += largest + 1

    def value(self) -> torch.Tensor:
        return self._sum.to(torch.float64) / self.scale

    def export(self) -> tuple[torch.Tensor, float]:
        """The exact running sum and its bound: with ``load``, a copy bit for bit."""
        return self._sum.clone(), self._bound

    def load(self, total: torch.Tensor, bound: float) -> None:
        self._sum, self._bound = total.to(torch.int64).clone(), bound


class GridProducts:
    """Σ AᵢᵀBᵢ over terms whose entries lie on fixed-point grids (integer multiples of
    2**-``a_bits`` and 2**-``b_bits``), by ordinary float64 matrix products that are
    nevertheless exact: in grid units every product and every partial sum is an integer
    below 2**53. So the sum depends only on which terms are in it — in any order, and
    grouped any way (one product over many terms at once included) — and removing a term
    cancels it exactly. The bound is tracked and overflow refused before anything changes.
    """

    _LIMIT = 2.0 ** 53

    def __init__(self, shape: tuple[int, int], a_bits: int, b_bits: int) -> None:
        self.scale = 2.0 ** (a_bits + b_bits)
        self._sum = torch.zeros(shape, dtype=torch.float64)
        self._bound = 0.0  # ≥ Σ over terms ever added of Σₜ max|aₜ| max|bₜ| (grid units)

    @staticmethod
    def bound(a: torch.Tensor, b: torch.Tensor) -> float:
        """What a term AᵀB adds to the bound: Σₜ max|aₜ| max|bₜ| ≥ max |(AᵀB)ᵢⱼ|."""
        return float(a.abs().amax(dim=1) @ b.abs().amax(dim=1)) if a.numel() else 0.0

    def fits(self, extra: float) -> bool:
        return self._bound + extra < self._LIMIT

    def add(self, a: torch.Tensor, b: torch.Tensor, sign: float = 1.0) -> None:
        """Add (``sign`` −1: subtract) AᵀB; A and B hold integers (grid units)."""
        extra = self.bound(a, b)
        if not self.fits(extra):
            raise OverflowError("the sum would leave the range where float64 is exact")
        self._sum.addmm_(a.T, b, alpha=sign)
        self._bound += extra

    def value(self) -> torch.Tensor:
        return self._sum / self.scale

    def export(self) -> tuple[torch.Tensor, float]:
        """The exact running sum and its bound: with ``load``, a copy bit for bit."""
        return self._sum.clone(), self._bound

    def load(self, total: torch.Tensor, bound: float) -> None:
        self._sum, self._bound = total.to(torch.float64).clone(), bound


def on_grid(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``x`` rounded to multiples of 2**-bits, in grid units (integer-valued float64)."""
    return torch.round(x.to(torch.float64) * 2.0 ** bits)


def _export_sums(count: int, sums: Mapping[str, ExactSum | GridProducts | None]
                 ) -> dict[str, torch.Tensor]:
    out = {"count": torch.tensor([count], dtype=torch.int64)}
    for key, total in sums.items():
        if total is not None:
            out[key], bound = total.export()
            out[f"{key}.bound"] = torch.tensor([bound], dtype=torch.float64)
    return out


class SumCombiner:
    """ΔW = Σ ΔW_i, kept as an exact sum per weight."""

    snapshots = True
    routed = False
    SCALE_BITS = 40  # grid 9e-13; |ΔW| entries up to 2**21 before overflow

    def __init__(self, editable: list[EditableWeight]) -> None:
        self._editable = {w.name: w for w in editable}
        self._sum: dict[str, ExactSum | None] = {w.name: None for w in editable}
        self._total: dict[str, torch.Tensor | None] = {w.name: None for w in editable}
        self._count = 0

    def validate(self, delta: EditDelta) -> None:
        """Any delta whose factors fit the weights (the ledger checks that) can be summed."""

    def _stored(self, name: str, delta: EditDelta) -> torch.Tensor:
        return self._editable[name].to_stored(delta.factors[name].dense(torch.float64))

    def _change(self, edit: ActiveEdit, sign: float) -> None:
        terms = {name: self._stored(name, edit.delta) for name in self._sum}  # all first
        for name, term in terms.items():
            if self._sum[name] is None:
                self._sum[name] = ExactSum(tuple(term.shape), self.SCALE_BITS)
            self._sum[name].add(term, sign)
        self._count += int(sign)
        for name, total in self._sum.items():
            # nothing active: exactly zero, so the ledger writes the pristine weights back
            self._total[name] = total.value() if self._count else None

    def add(self, edit: ActiveEdit) -> None:
        self._change(edit, 1.0)

    def remove(self, edit: ActiveEdit) -> None:
        self._change(edit, -1.0)

    def settle(self, version: int) -> None:
        """Nothing to do: the exact sum already depends on the active set alone."""

    def exact_version(self, version: int) -> int:
        """After every change the total is a function of the active set alone."""
        return version

    def exact_state(self) -> dict[str, torch.Tensor]:
        """What determines the total: the exact sums and the count (see ``restore``)."""
        return _export_sums(self._count, self._sum)

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        """Take the state ``exact_state`` gave (of the same set of edits), bit for bit."""
        self._count = int(state["count"][0])
        for name in self._sum:
            if name in state:
                total = ExactSum(tuple(state[name].shape), self.SCALE_BITS)
                total.load(state[name], float(state[f"{name}.bound"][0]))
                self._sum[name] = total
            else:
                self._sum[name] = None
            self._total[name] = self._sum[name].value() if self._count and self._sum[
                name] is not None else None

    def recompute(self, active: list[ActiveEdit]) -> None:
        self._sum = {name: None for name in self._sum}
        self._total = {name: None for name in self._sum}
        self._count = 0
        for edit in active:
            self.add(edit)

    def total(self, name: str) -> torch.Tensor | None:
        return self._total[name]

    def publish(self) -> None:
        """Nothing beyond the weights themselves to publish."""


def keys_and_values(delta: EditDelta, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """An edit's keys K [n, d_in] and values V = K ΔW [n, d_out] for one weight (float64).

    Computed from the stored factors (``V = step · (K uᵀ) d``), never a dense ΔW.
    """
    f = delta.factors[name]
    keys = delta.ridge_input_matrix(name).to(torch.float64)
    values = (keys @ f.u.to(torch.float64).T) @ f.d.to(torch.float64) * f.step
    return keys, values


class RidgeCombiner:
    """ΔW = (Σ KᵢᵀKᵢ + λI)⁻¹ Σ KᵢᵀVᵢ per weight, with ``ridge_lambda`` per weight name (or
    one for all).

    ``refresh_every`` (the service's ``ridge_refresh_every``): solve exactly at every change
    whose version is a multiple of it (1: at every change, with no rank updates).
    """

    snapshots = True
    routed = False
    # Keys are rounded to 2.4e-4 (layer inputs: rms ≈ 1, at most ≈ 30 in the demo LM),
    # values to 3.8e-6 (output shifts: rms ≈ 0.3, at most ≈ 30). Exactness then holds for
    # about a million keys (≈ 100,000 edits) — the bound is checked, overflow refused.
    KEY_BITS = 12
    VALUE_BITS = 18

    def __init__(self, editable: list[EditableWeight],
                 ridge_lambda: float | Mapping[str, float],
                 refresh_every: int = RIDGE_REFRESH_EVERY) -> None:
        self._editable = {w.name: w for w in editable}
        lam = ridge_lambda
        self.ridge_lambda = {w.name: float(lam if isinstance(lam, (int, float)) else lam[w.name])
                             for w in editable}
        if any(v <= 0 for v in self.ridge_lambda.values()):
            raise ValueError("the ridge λ must be positive (it keeps the solve well posed)")
        if refresh_every < 1:
            raise ValueError("refresh_every must be at least 1")
        self.refresh_every = refresh_every
        self._gram: dict[str, GridProducts] = {}
        self._cross: dict[str, GridProducts] = {}
        self._clear_sums()
        self._inverse: dict[str, torch.Tensor | None] = {w.name: None for w in editable}
        self._delta: dict[str, torch.Tensor | None] = {w.name: None for w in editable}
        self._total: dict[str, torch.Tensor | None] = {w.name: None for w in editable}
        self._count = 0

    def validate(self, delta: EditDelta) -> None:
        """The delta must carry finite keys of each weight's input width."""
        for name, w in self._editable.items():
            if delta.ridge_inputs is None or name not in delta.ridge_inputs:
                raise ValueError(f"the ridge combination combines edits by their keys; the "
                                 f"delta has none for {name}")
            keys = delta.ridge_input_matrix(name)
            if keys.dim() != 2 or keys.shape[1] != w.d_in or not torch.isfinite(keys).all():
                raise ValueError(f"keys of {name} are {tuple(keys.shape)}; expected finite "
                                 f"(tokens, {w.d_in})")

    def _clear_sums(self) -> None:
        for name, w in self._editable.items():
            self._gram[name] = GridProducts((w.d_in, w.d_in), self.KEY_BITS, self.KEY_BITS)
            self._cross[name] = GridProducts((w.d_in, w.d_out), self.KEY_BITS,
                                             self.VALUE_BITS)

    def _on_grid(self, delta: EditDelta, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """An edit's keys and values on the fixed-point grids, in grid units: what the
        sums and the rank updates both use, so both solve the same problem."""
        keys, values = keys_and_values(delta, name)
        return on_grid(keys, self.KEY_BITS), on_grid(values, self.VALUE_BITS)

    def _check_sums(self, parts: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Refuse, before anything changes, a change whose KᵀK or KᵀV would overflow a sum."""
        if not all(self._gram[n].fits(GridProducts.bound(k, k))
                   and self._cross[n].fits(GridProducts.bound(k, v))
                   for n, (k, v) in parts.items()):
            raise OverflowError("too many or too large keys for the exact sums")

    def _add_sums(self, name: str, k: torch.Tensor, v: torch.Tensor, sign: float) -> None:
        self._gram[name].add(k, k, sign)
        self._cross[name].add(k, v, sign)

    def _change_weight(self, name: str, k: torch.Tensor, v: torch.Tensor, sign: float,
                       update: bool) -> bool:
        """One weight's part of a change: its sums, then (``update``) its rank update;
        false when that update was numerically singular (an exact solve must follow)."""
        self._add_sums(name, k, v, sign)
        if not update:
            return True
        try:
            self._rank_update(name, k / 2.0 ** self.KEY_BITS, v / 2.0 ** self.VALUE_BITS,
                              sign)
        except RuntimeError:
            return False
        return True

    def _change(self, edit: ActiveEdit, sign: float) -> None:
        names = list(self._gram)  # every weight's grids first, each on its own worker
        parts = dict(zip(names, run_all([partial(self._on_grid, edit.delta, n)
                                         for n in names])))
        self._check_sums(parts)
        self._count += int(sign)
        exact = self._count == 0 or self.refresh_every == 1 or any(
            d is None for d in self._delta.values())
        updated = run_all([partial(self._change_weight, name, k, v, sign, not exact)
                           for name, (k, v) in parts.items()])  # each on its own worker
        if exact or not all(updated):
            self._refresh()
        self._publish()

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
        """P and ΔW exactly from the sums (or none, with nothing active)."""

        def solve(name: str) -> None:
            gram = self._gram[name].value()
            gram.diagonal().add_(self.ridge_lambda[name])
            inverse = torch.cholesky_inverse(torch.linalg.cholesky(gram)).contiguous()
            self._inverse[name] = inverse
            self._delta[name] = inverse @ self._cross[name].value()

        if self._count == 0:  # nothing active: exactly zero, not a rounding residue
            for name in self._editable:
                self._inverse[name] = self._delta[name] = None
            return
        run_all([partial(solve, name) for name in self._editable])

    def add(self, edit: ActiveEdit) -> None:
        self._change(edit, 1.0)

    def remove(self, edit: ActiveEdit) -> None:
        self._change(edit, -1.0)

    def settle(self, version: int) -> None:
        """At a refresh version, replace the rank-updated state by the exact solve."""
        if self._count and version % self.refresh_every == 0 and self.refresh_every > 1:
            self._refresh()
            self._publish()

    def exact_version(self, version: int) -> int:
        """The newest version ≤ ``version`` right after which the state is a function of
        the active set alone (a refresh version): where a replica may start from a
        snapshot and, following the log from there, match its peers bit for bit."""
        return version - version % self.refresh_every

    def exact_state(self) -> dict[str, torch.Tensor]:
        """What determines the state at a refresh version: the exact sums and the count.
        A replica that ``restore``s it there solves to the same bits as one that built it."""
        sums = {f"{n}.gram": g for n, g in self._gram.items()}
        sums.update({f"{n}.cross": c for n, c in self._cross.items()})
        return _export_sums(self._count, sums)

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        """Take the state ``exact_state`` gave (of the same set of edits) and solve."""
        self._clear_sums()
        for name in self._editable:
            for kind, sums in (("gram", self._gram), ("cross", self._cross)):
                key = f"{name}.{kind}"
                sums[name].load(state[key], float(state[f"{key}.bound"][0]))
        self._count = int(state["count"][0])
        self._refresh()
        self._publish()

    def recompute(self, active: list[ActiveEdit]) -> None:
        """Solve from scratch: every active edit's keys in one product per weight."""
        self._clear_sums()
        if active:
            parts = {}
            for name in self._gram:
                grids = [self._on_grid(edit.delta, name) for edit in active]
                parts[name] = (torch.cat([k for k, _ in grids]),
                               torch.cat([v for _, v in grids]))
            self._check_sums(parts)
            run_all([partial(self._add_sums, name, k, v, 1.0)
                     for name, (k, v) in parts.items()])
        self._count = len(active)
        self._refresh()
        self._publish()

    def total(self, name: str) -> torch.Tensor | None:
        return self._total[name]

    def publish(self) -> None:
        """Nothing beyond the weights themselves to publish."""


@dataclass(frozen=True)
class CombinationConfig:
    """Which combination an editor was trained for; saved in its checkpoint.

    Saved (``to_json``) with λ under its first name, ``lam``: the edit store's key is a hash
    of that JSON, so the stores of running services keep their keys; ``from_json`` reads
    either name."""

    kind: str = "sum"  # "memory" (routed, unmerged), "sum" or "ridge"
    ridge_lambda: Mapping[str, float] | float | None = None  # ridge only: λ per weight (or one)

    def __post_init__(self) -> None:
        if self.kind not in ("memory", "sum", "ridge"):
            raise ValueError(f"unknown combination {self.kind!r}; use 'memory', 'sum' or "
                             "'ridge'")
        if self.kind == "ridge" and self.ridge_lambda is None:
            raise ValueError("a ridge combination needs λ")

    @property
    def needs_ridge_inputs(self) -> bool:
        return self.kind == "ridge"

    @property
    def needs_routing(self) -> bool:
        return self.kind == "memory"

    def combiner(self, editable: list[EditableWeight],
                 ridge_refresh_every: int = RIDGE_REFRESH_EVERY, routing=None) -> DeltaCombiner:
        """The combiner; the edit memory needs its ``RoutingConfig`` as ``routing``."""
        if self.kind == "memory":
            if routing is None:
                raise ValueError("the edit memory needs a routing configuration")
            return EditMemory(editable, routing)
        if self.kind == "ridge":
            return RidgeCombiner(editable, self.ridge_lambda, ridge_refresh_every)
        return SumCombiner(editable)

    def to_json(self) -> dict:
        """The saved form (checkpoints, store keys, exports): λ keeps its first name."""
        lam = dict(self.ridge_lambda) if isinstance(self.ridge_lambda, Mapping) \
            else self.ridge_lambda
        return {"kind": self.kind, "lam": lam}

    @classmethod
    def from_json(cls, saved: Mapping) -> CombinationConfig:
        """A saved combination: λ as ``lam`` (as saved) or ``ridge_lambda``."""
        lam = saved.get("ridge_lambda", saved.get("lam"))
        return cls(saved.get("kind", "sum"), lam)
