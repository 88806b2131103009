"""Meta-training for the joint (ridge) combination of many edits.

The editor is trained the way it will be used: a step's edits are combined by the ridge
solve (``combination.RidgeCombiner``) inside the graph, so the hypernetwork learns values
that compose instead of deltas that only work alone. A **background bank** of other
training edits — their key/value sums computed by the current hypernetwork and refreshed
every few steps — joins every solve, so each step sees the crowd of edits a long-lived
service holds; a few of the bank's edits are also checked after the step's solve, so new
edits learn not to overwrite old ones.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from editor_core.data.records import EditCase, Probe
from editor_core.delta import WeightFactors
from editor_core.editor import Editor

from .examples import make_example


def edit_values(keys: torch.Tensor, factors: WeightFactors) -> torch.Tensor:
    """The output shift ``keys · ΔW`` an edit's own factors make on its keys (with grad)."""
    return (keys @ factors.u.T) @ factors.d * factors.step


class KeyValueSums:
    """Per weight, Σ KᵀK and Σ KᵀV over a set of edits (float32, for training)."""

    def __init__(self, editor: Editor) -> None:
        self.gram: dict[str, torch.Tensor] = {}
        self.cross: dict[str, torch.Tensor] = {}
        self.count = 0
        for w in editor.editable:
            self.gram[w.name] = torch.zeros(w.d_in, w.d_in)
            self.cross[w.name] = torch.zeros(w.d_in, w.d_out)

    def add(self, keys: dict[str, torch.Tensor], factors: dict[str, WeightFactors]) -> None:
        for name in self.gram:
            k = keys[name]
            self.gram[name] = self.gram[name] + k.T @ k
            self.cross[name] = self.cross[name] + k.T @ edit_values(k, factors[name])
        self.count += 1


def ridge_weights(editor: Editor, sums: KeyValueSums, lam: dict[str, torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
    """The editable weights with the ridge combination of ``sums`` applied (W − ΔW)."""
    params = dict(editor.edit_model.named_parameters())
    out = {}
    for w in editor.editable:
        gram = sums.gram[w.name]
        system = gram + lam[w.name] * torch.eye(gram.shape[0], dtype=gram.dtype)
        delta = torch.cholesky_solve(sums.cross[w.name], torch.linalg.cholesky(system))
        out[w.name] = params[w.name] - w.to_stored(delta).to(params[w.name].dtype)
    return out


class EditBank:
    """Background edits whose key/value sums join every training solve."""

    def __init__(self, editor: Editor, records: Sequence[EditCase], size: int,
                 rng: random.Random, describe) -> None:
        self.editor = editor
        self.records = list(records)
        self.size = size
        self.rng = rng
        self.describe = describe  # wraps a request in a training description
        self.sums = KeyValueSums(editor)
        self.members: list[EditCase] = []

    @torch.no_grad()
    def refresh(self) -> None:
        """Draw the bank afresh and compute its sums with the hypernetwork as it is now."""
        editor = self.editor
        was_training = editor.hypernetwork.training
        editor.hypernetwork.eval()
        try:
            self.members = self.rng.sample(self.records, min(self.size, len(self.records)))
            self.sums = KeyValueSums(editor)
            for start in range(0, len(self.members), 16):
                chunk = self.members[start:start + 16]
                requests = [self.describe(make_example(r, self.rng, 0, 0)).request
                            for r in chunk]
                keys = editor.ridge_inputs(requests)
                batch = editor.transform(editor.capture(editor.encode(requests)))
                for i in range(len(requests)):
                    self.sums.add({n: k[i] for n, k in keys.items()},
                                  {n: f.select(*f.spans[i]) for n, f in batch.items()})
        finally:
            editor.hypernetwork.train(was_training)

    def retention_probes(self, n: int) -> list[Probe]:
        """Plain-prompt probes of ``n`` bank edits (did the step's edits keep them?)."""
        chosen = self.rng.sample(self.members, min(n, len(self.members)))
        return [Probe(r.prompt, r.target_new) for r in chosen if r.task != "convsent"]


    def locality_probes(self, n: int) -> list[Probe]:
        """Locality probes of ``n`` bank edits: what the whole crowd must leave alone."""
        chosen = self.rng.sample(self.members, min(n, len(self.members)))
        probes = [p for r in chosen for ps in r.locality.values() for p in ps]
        return self.rng.sample(probes, min(n, len(probes)))


def with_bank(bank: EditBank | None, sums: KeyValueSums) -> KeyValueSums:
    """The step's sums plus the bank's (detached) ones."""
    if bank is None or bank.sums.count == 0:
        return sums
    out = KeyValueSums.__new__(KeyValueSums)
    out.gram = {n: g + bank.sums.gram[n] for n, g in sums.gram.items()}
    out.cross = {n: c + bank.sums.cross[n] for n, c in sums.cross.items()}
    out.count = sums.count + bank.sums.count
    return out
