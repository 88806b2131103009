"""An edit's weight change, kept as low-rank factors and never as a dense matrix.

For each editable weight, ``ΔW = step · Σ_r u_r d_rᵀ`` in the weight's ``(d_in, d_out)``
view; the ledger applies it as ``W ← W − ΔW`` (so an identity editor takes a gradient
descent step). A batch's delta records which rows belong to which request, so every edit of
a batch can be stored and removed on its own.

An edit may also carry **ridge inputs** (``ridge_inputs``, the K of the ridge solve; stored
as the ``{i}.k`` tensors): per weight, the layer's inputs at the tokens of the plain prompt
and target (one ``[n, d_in]`` matrix per request). A joint combination of many edits
(``combination.RidgeCombiner``) asks the combined ΔW to reproduce, on each edit's ridge
inputs, the output shift the edit's own ΔW makes there. An edit for the edit memory carries its
**routing keys** instead (``delta.RoutingKey``: the gate inputs where it fires, its
subject's token ids, its answer's token paths), stored with the factors.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from functools import partial

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .workers import MIN_PARALLEL_ROWS, run_all

# The stored form of an edit: ΔW truncated to 12% relative Frobenius error, factors kept in
# bfloat16 (fp32's range, so no underflow). On the demo LM that is ≈50 KB an edit against
# ≈210 KB at 1%, and 300 held-out edits answer within a point either way (reliability
# 0.860 against 0.870, paraphrase 0.867 against 0.870 at 10,000:
# bench/stream-heldout.json). The stored factors *are* the edit: the ledger applies and
# removes exactly them, so live weights and replays always agree.
STORE_REL_TOL = 0.12
STORE_DTYPE = torch.bfloat16


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

    def compressed(self, rel_tol: float, dtype: torch.dtype = torch.float32) -> WeightFactors:
        """The same ΔW with fewer rows, truncated to a relative Frobenius error ≤ ``rel_tol``.

        ``ΔW = step · Aᵀ B`` with A [R, d_in], B [R, d_out]. Only R×R problems are solved:
        with ``A Aᵀ = V Λ Vᵀ``, ``Aᵀ = Q Λ^½ Vᵀ`` (Q orthonormal), so ``Aᵀ B = Q P`` with
        ``P = Λ^½ Vᵀ B``; the eigenvectors W of ``P Pᵀ`` give the SVD ``P = W Σ Zᵀ``. The
        smallest singular directions are dropped while their energy stays within tolerance,
        and the kept ones are stored balanced (``Σ^½`` on each side) in ``dtype``.
        Symmetric eigensolvers are used because LAPACK's QR/SVD at these sizes can stall for
        hundreds of milliseconds when torch's threads compete for cores.
        """
        if self.rows <= 1:
            return WeightFactors(self.u.to(dtype), self.d.to(dtype), self.step,
                                 ((0, self.rows),))
        a, b = self.u.to(torch.float64), self.d.to(torch.float64)
        lam, vec = torch.linalg.eigh(a @ a.T)
        nonzero = lam > lam.max().clamp(min=0) * 1e-12
        if not nonzero.any():
            return WeightFactors(self.u[:0].to(dtype), self.d[:0].to(dtype), self.step,
                                 ((0, 0),))
        lam, vec = lam[nonzero], vec[:, nonzero]
        p = (vec * lam.sqrt()).T @ b
        sig2, w = torch.linalg.eigh(p @ p.T)
        sig2, w = sig2.flip(0).clamp(min=0), w.flip(1)  # descending
        total = sig2.sum()
        if total == 0:
            return WeightFactors(self.u[:0].to(dtype), self.d[:0].to(dtype), self.step,
                                 ((0, 0),))
        tail = sig2.flip(0).cumsum(0).flip(0)  # tail[k] = energy of directions k..end
        keep = max(1, int((tail > (rel_tol ** 2) * total).sum().item()))
        sig = sig2[:keep].sqrt()
        left = (a.T @ (vec / lam.sqrt())) @ w[:, :keep]  # Q W_k, orthonormal columns
        right = (p.T @ w[:, :keep]) / sig  # Z_k
        root = sig.sqrt()
        u = (left * root).T.contiguous().to(dtype)
        d = (right * root).T.contiguous().to(dtype)
        return WeightFactors(u, d, self.step, ((0, keep),))


@dataclass(frozen=True)
class RoutingKey:
    """Where the edit memory fires an edit: the gate module's input at the last token of
    the plain prompt and of each rephrase (``keys`` [k, d], pristine model), and the token
    sequences of the subject and its aliases (none: the edit has no subject).

    Once fired, the edit acts while the answer being written follows one of ``answers``
    (the target's token ids with each accepted ending; none: an opinion edit, which has no
    single answer) and stops at the first token that leaves them or that is one of ``ends``
    (the line's end), so the text after its answer is the model's own."""


    keys: torch.Tensor
    subjects: tuple[tuple[int, ...], ...] = ()
    answers: tuple[tuple[int, ...], ...] = ()
    ends: tuple[int, ...] = ()
    contrast: torch.Tensor | None = None  # [c, d] gate inputs of other questions about
    # the subject: the edit fires only where a query is closer to its own keys


@dataclass(frozen=True)
class EditDelta:
    """Per editable weight, the factors of one edit or of a batch of edits."""

    factors: dict[str, WeightFactors]
    n_requests: int = 1
    ridge_inputs: dict[str, tuple[torch.Tensor, ...]] | None = None  # per weight, one per request
    routes: tuple[RoutingKey, ...] | None = None  # one per request (the edit memory's)

    @property
    def routing(self) -> RoutingKey | None:
        """A single request's routing key (None: computed without one)."""
        if self.routes is None:
            return None
        if self.n_requests != 1:
            raise ValueError("take one request's routing key (use split())")
        return self.routes[0]

    def split(self) -> list[EditDelta]:
        """One delta per request of a batch, in request order."""
        if self.n_requests == 1:
            return [self]
        out = []
        for i in range(self.n_requests):
            inputs = None if self.ridge_inputs is None else {
                n: (k[i],) for n, k in self.ridge_inputs.items()}
            out.append(EditDelta({
                name: f.select(*f.spans[i]) for name, f in self.factors.items()
            }, 1, inputs, None if self.routes is None else (self.routes[i],)))
        return out

    def ridge_input_matrix(self, name: str) -> torch.Tensor:
        """The ridge inputs of a single-request delta for one weight."""
        if self.ridge_inputs is None:
            raise ValueError("this delta carries no ridge inputs (computed without them)")
        if self.n_requests != 1:
            raise ValueError("take one request's ridge inputs (use split())")
        return self.ridge_inputs[name][0]

    def compressed(self, rel_tol: float | None = None, dtype: torch.dtype | None = None
                   ) -> EditDelta:
        """Each request's factors (and keys) in their stored form (see
        ``WeightFactors.compressed``)."""
        rel_tol = STORE_REL_TOL if rel_tol is None else rel_tol
        dtype = STORE_DTYPE if dtype is None else dtype
        parts = []
        for p in self.split():  # each weight's factors on their own worker
            rows = sum(f.rows for f in p.factors.values())
            factors = run_all([partial(f.compressed, rel_tol, dtype)
                               for f in p.factors.values()], rows >= MIN_PARALLEL_ROWS)
            parts.append(EditDelta(dict(zip(p.factors, factors)), 1,
                                   None if p.ridge_inputs is None else
                                   {n: tuple(k.to(dtype).contiguous() for k in ks)
                                    for n, ks in p.ridge_inputs.items()}, p.routes))
        return parts[0] if len(parts) == 1 else merge(parts)

    def nbytes(self) -> int:
        keys = 0 if self.ridge_inputs is None else sum(k.numel() * k.element_size()
                                               for ks in self.ridge_inputs.values() for k in ks)
        keys += 0 if self.routes is None else sum(r.keys.numel() * r.keys.element_size()
                                                  for r in self.routes)
        return keys + sum(f.u.numel() * f.u.element_size() + f.d.numel() * f.d.element_size()
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
            if self.ridge_inputs is not None:
                tensors[f"{i}.k"] = self.ridge_input_matrix(name).contiguous()
            meta[f"{i}.name"] = name
            meta[f"{i}.step"] = repr(f.step)
        if self.routes is not None:
            tensors["route.keys"] = self.routing.keys.contiguous()
            meta["route.subjects"] = json.dumps([list(s) for s in self.routing.subjects])
            meta["route.answers"] = json.dumps([list(a) for a in self.routing.answers])
            meta["route.ends"] = json.dumps(list(self.routing.ends))
            if self.routing.contrast is not None:
                tensors["route.contrast"] = self.routing.contrast.contiguous()
        return st_save(tensors, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> EditDelta:
        # safetensors layout: 8-byte little-endian header length, then the JSON header.
        header_len = struct.unpack("<Q", data[:8])[0]
        meta = json.loads(data[8:8 + header_len]).get("__metadata__", {})
        tensors = st_load(data)
        factors, keys = {}, {}
        i = 0
        while f"{i}.name" in meta:
            name = meta[f"{i}.name"]
            factors[name] = WeightFactors(
                tensors[f"{i}.u"], tensors[f"{i}.d"], float(meta[f"{i}.step"]),
                ((0, tensors[f"{i}.u"].shape[0]),))
            if f"{i}.k" in tensors:
                keys[name] = (tensors[f"{i}.k"],)
            i += 1
        routes = None
        if "route.keys" in tensors:
            subjects = tuple(tuple(s) for s in json.loads(meta.get("route.subjects", "[]")))
            answers = tuple(tuple(a) for a in json.loads(meta.get("route.answers", "[]")))
            ends = tuple(json.loads(meta.get("route.ends", "[]")))
            routes = (RoutingKey(tensors["route.keys"], subjects, answers, ends,
                                 tensors.get("route.contrast")),)
        return cls(factors, 1, keys or None, routes)


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
    with_keys = [d.ridge_inputs is not None for d in deltas]
    if any(with_keys) and not all(with_keys):
        raise ValueError("cannot merge deltas with keys and deltas without")
    keys = None if not all(with_keys) else {
        name: tuple(k for d in deltas for k in d.ridge_inputs[name]) for name in names}
    routed = [d.routes is not None for d in deltas]
    if any(routed) and not all(routed):
        raise ValueError("cannot merge deltas with routing keys and deltas without")
    routes = tuple(r for d in deltas for r in d.routes) if all(routed) else None
    return EditDelta(factors, len(deltas), keys, routes)


@dataclass(frozen=True)
class ActiveEdit:
    """An edit the ledger holds: its id, the version that applied it, and its delta."""

    edit_id: str
    version: int
    delta: EditDelta
