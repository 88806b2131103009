"""An edit's weight change, kept as low-rank factors and never as a dense matrix.

For each editable weight, ``ΔW = step · Σ_r u_r d_rᵀ`` in the weight's ``(d_in, d_out)``
view; the ledger applies it as ``W ← W − ΔW`` (so an identity editor takes a gradient
descent step). A batch's delta records which rows belong to which request, so every edit of
a batch can be stored and removed on its own.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

# Stored edits keep ΔW to this relative (Frobenius) accuracy; see WeightFactors.compressed.
STORE_REL_TOL = 1e-3


@dataclass(frozen=True)
class WeightFactors:
    """Rows ``u`` [R, d_in] and ``d`` [R, d_out] (fp32), their step size, and request spans."""

    u: torch.Tensor
    d: torch.Tensor
    step: float
    spans: tuple[tuple[int, int], ...] = ()

    @property
    def rows(self) -> int:
        return self.u.shape[0]

    def dense(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``step · uᵀ d`` as a dense ``(d_in, d_out)`` matrix."""
        return (self.u.to(dtype).T @ self.d.to(dtype)) * self.step

    def select(self, start: int, stop: int) -> WeightFactors:
        return WeightFactors(self.u[start:stop], self.d[start:stop], self.step,
                             ((0, stop - start),))

    def compressed(self, rel_tol: float) -> WeightFactors:
        """The same ΔW with fewer rows: truncated SVD of its (small) core.

        ``ΔW = step · Aᵀ B`` with A [R, d_in], B [R, d_out]. With thin QRs Aᵀ = Q_a R_a and
        Bᵀ = Q_b R_b, ΔW = step · Q_a (R_a R_bᵀ) Q_bᵀ, and only the R×R core needs an SVD.
        Singular directions are dropped while the Frobenius error stays ≤ ``rel_tol``·‖ΔW‖.
        """
        if self.rows <= 1:
            return self
        a, b = self.u.to(torch.float64).T, self.d.to(torch.float64).T
        qa, ra = torch.linalg.qr(a)
        qb, rb = torch.linalg.qr(b)
        left, sing, right_h = torch.linalg.svd(ra @ rb.T)
        energy = sing.square()
        total = energy.sum()
        if total == 0:
            return WeightFactors(self.u[:0], self.d[:0], self.step, ((0, 0),))
        # Smallest k whose dropped tail energy is within tolerance.
        tail = energy.flip(0).cumsum(0).flip(0)  # tail[k] = energy of directions k..end
        allowed = (rel_tol ** 2) * total
        keep = int((tail > allowed).sum().item())
        keep = max(1, keep)
        u = (qa @ (left[:, :keep] * sing[:keep])).T
        d = (qb @ right_h[:keep].T).T
        return WeightFactors(u.to(torch.float32).contiguous(), d.to(torch.float32).contiguous(),
                             self.step, ((0, keep),))


@dataclass(frozen=True)
class EditDelta:
    """Per editable weight, the factors of one edit or of a batch of edits."""

    factors: dict[str, WeightFactors]
    n_requests: int = 1

    def split(self) -> list[EditDelta]:
        """One delta per request of a batch, in request order."""
        if self.n_requests == 1:
            return [self]
        out = []
        for i in range(self.n_requests):
            out.append(EditDelta({
                name: f.select(*f.spans[i]) for name, f in self.factors.items()
            }, 1))
        return out

    def compressed(self, rel_tol: float) -> EditDelta:
        """Each request's factors truncated to the rank ``rel_tol`` allows (see WeightFactors)."""
        parts = [EditDelta({n: f.compressed(rel_tol) for n, f in p.factors.items()}, 1)
                 for p in self.split()]
        return parts[0] if len(parts) == 1 else merge(parts)

    def nbytes(self) -> int:
        return sum(f.u.numel() * f.u.element_size() + f.d.numel() * f.d.element_size()
                   for f in self.factors.values())

    def dense_nbytes(self) -> int:
        """Bytes of the same change stored as dense fp32 matrices."""
        return sum(f.u.shape[1] * f.d.shape[1] * 4 for f in self.factors.values())

    # -- bytes, for the edit store ------------------------------------------------------
    def to_bytes(self) -> bytes:
        """safetensors bytes of one request's factors (no pickling anywhere)."""
        if self.n_requests != 1:
            raise ValueError("serialise each request's delta on its own (use split())")
        tensors, meta = {}, {}
        for i, (name, f) in enumerate(self.factors.items()):
            tensors[f"{i}.u"] = f.u.contiguous()
            tensors[f"{i}.d"] = f.d.contiguous()
            meta[f"{i}.name"] = name
            meta[f"{i}.step"] = repr(f.step)
        return st_save(tensors, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> EditDelta:
        # safetensors layout: 8-byte little-endian header length, then the JSON header.
        header_len = struct.unpack("<Q", data[:8])[0]
        meta = json.loads(data[8:8 + header_len]).get("__metadata__", {})
        tensors = st_load(data)
        factors = {}
        i = 0
        while f"{i}.name" in meta:
            factors[meta[f"{i}.name"]] = WeightFactors(
                tensors[f"{i}.u"], tensors[f"{i}.d"], float(meta[f"{i}.step"]),
                ((0, tensors[f"{i}.u"].shape[0]),))
            i += 1
        return cls(factors, 1)


def merge(deltas: list[EditDelta]) -> EditDelta:
    """Concatenate single-request deltas into one batch delta (rows stay attributable)."""
    names = list(deltas[0].factors)
    factors = {}
    for name in names:
        parts = [d.factors[name] for d in deltas]
        spans, start = [], 0
        for p in parts:
            spans.append((start, start + p.rows))
            start += p.rows
        steps = {p.step for p in parts}
        if len(steps) != 1:
            raise ValueError(f"cannot merge deltas of {name} made with different step sizes")
        factors[name] = WeightFactors(torch.cat([p.u for p in parts]),
                                      torch.cat([p.d for p in parts]), parts[0].step,
                                      tuple(spans))
    return EditDelta(factors, len(deltas))
