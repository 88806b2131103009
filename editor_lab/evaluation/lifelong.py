"""Lifelong editing: edits accumulate into the thousands on one live model.

The edits of a stream are applied one after another through a ``WeightLedger`` (the same
code the service runs), combined as the method says (plain sum or joint ridge), each
computed on the current or on the pristine weights. At every checkpoint N it measures, over
the N active edits: reliability (teacher-forced, plain prompt), generalization (a held-out
rephrase), retention of the first edits, and neighbour locality against the unedited
model. At the removal checkpoint it rolls back a random share of the edits and compares
weights and answers with a ledger built from the remaining edits alone (under the plain sum
the weights are the same bit for bit; under ridge, between refresh versions, the rank
updates depend on the path, so they agree to rounding), then re-applies them and goes on.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from editor_core.combination import DeltaCombiner
from editor_core.data.records import EditCase, Probe
from editor_core.delta import EditDelta
from editor_core.editor import EditRequest, Editor
from editor_core.ledger import WeightLedger

from .metrics import answer_argmax, token_accuracy, unchanged_share


@dataclass(frozen=True)
class LifelongMethod:
    """An editor, how its edits combine, and on which weights each edit is computed."""

    name: str
    editor: Editor
    combiner: Callable[[], DeltaCombiner]
    basis: str  # "current" or "pristine" (the editor must have been built with it)


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


class LifelongEvaluator:
    def __init__(self, records: Sequence[EditCase], *, retention_first: int = 100,
                 locality_edits: int = 200, batch_size: int = 64, seed: int = 0) -> None:
        self.records = list(records)
        self.retention_first = retention_first
        self.batch_size = batch_size
        self.rng = random.Random(seed)
        self.locality = [p for r in self.records[:locality_edits]
                         for p in r.locality.get("Neighborhood", ())]

    def run(self, method: LifelongMethod, checkpoints: Sequence[int],
            removal_at: int | None = None, removal_share: float = 0.1) -> dict:
        """Results per checkpoint (and the removal check), as JSON-ready dicts."""
        editor = method.editor
        if editor.basis != method.basis:
            raise ValueError(f"{method.name}: the editor computes on {editor.basis!r} "
                             f"weights, the method says {method.basis!r}")
        model, tok, limit = editor.model, editor.tokenizer, editor.max_length
        ledger = WeightLedger(model, editor.editable, method.combiner(),
                              [editor.edit_model] if editor.follows_live_weights else [])
        pristine_answers = answer_argmax(model, tok, self.locality, limit, self.batch_size)
        deltas: list[EditDelta] = []
        results: dict = {"checkpoints": {}}
        stop = max(checkpoints)
        if stop > len(self.records):
            raise ValueError(f"{stop} edits asked for, the stream has {len(self.records)}")
        seconds = {"compute": 0.0, "apply": 0.0}
        try:
            for i, record in enumerate(tqdm(self.records[:stop], desc=method.name,
                                            unit="edit", leave=False)):
                start = time.perf_counter()
                delta = editor.compute(EditRequest.from_record(record)).compressed()
                seconds["compute"] += time.perf_counter() - start
                start = time.perf_counter()
                ledger.apply(f"e{i}", delta)
                seconds["apply"] += time.perf_counter() - start
                deltas.append(delta)
                n = i + 1
                if n in checkpoints:
                    results["checkpoints"][n] = {
                        **self._measure(editor, n, pristine_answers),
                        "ms_per_edit": {k: 1000 * v / n for k, v in seconds.items()}}
                if n == removal_at:
                    results["removal"] = self._removal_check(ledger, editor, deltas,
                                                             removal_share)
        finally:
            ledger.reset()
        return results

    @torch.no_grad()
    def _measure(self, editor: Editor, n: int, pristine_answers) -> dict:
        model, tok, limit = editor.model, editor.tokenizer, editor.max_length
        active = self.records[:n]
        rel = token_accuracy(model, tok, [Probe(r.prompt, r.target_new) for r in active],
                             limit, self.batch_size)
        gen = token_accuracy(model, tok, [Probe(r.rephrases[0], r.target_new)
                                          for r in active if r.rephrases],
                             limit, self.batch_size)
        loc = unchanged_share(pristine_answers, answer_argmax(model, tok, self.locality, limit,
                                                              self.batch_size))
        return {"edits": n, "reliability": _mean(rel), "generalization": _mean(gen),
                "retention_first": _mean(rel[:self.retention_first]),
                "neighbour_locality": _mean(loc)}

    def _removal_check(self, ledger: WeightLedger, editor: Editor,
                       deltas: list[EditDelta], share: float) -> dict:
        """Roll back a random ``share`` of the active edits; compare with a from-scratch
        build of the rest (weights and answers); then put the removed ones back."""
        model, tok, limit = editor.model, editor.tokenizer, editor.max_length
        ids = [f"e{i}" for i in range(len(deltas))]
        removed = sorted(self.rng.sample(range(len(deltas)), max(1, int(share * len(deltas)))))
        for i in removed:
            ledger.remove(ids[i])
        kept = [i for i in range(len(deltas)) if i not in set(removed)]
        probes = [Probe(self.records[i].prompt, self.records[i].target_new) for i in kept]
        params = dict(model.named_parameters())
        live_weights = {w.name: params[w.name].detach().clone() for w in editor.editable}
        live_rel = token_accuracy(model, tok, probes, limit, self.batch_size)
        live_loc = answer_argmax(model, tok, self.locality, limit, self.batch_size)
        ledger.reset()
        for i in kept:
            ledger.apply(ids[i], deltas[i])
        fresh_rel = token_accuracy(model, tok, probes, limit, self.batch_size)
        fresh_loc = answer_argmax(model, tok, self.locality, limit, self.batch_size)
        errors = [((params[n].detach().double() - w.double()).norm()
                   / params[n].detach().double().norm()).item()
                  for n, w in live_weights.items()]
        for i in removed:
            ledger.apply(ids[i], deltas[i])
        return {"active_before": len(deltas), "removed": len(removed),
                "max_relative_weight_error": max(errors),
                "reliability_live": _mean(live_rel), "reliability_fresh": _mean(fresh_rel),
                "same_answers": live_rel == fresh_rel
                and all(torch.equal(a, b) for a, b in zip(live_loc, fresh_loc))}


def lifelong_table(results: dict[str, dict]) -> str:
    """Markdown: one row per method and checkpoint, then the removal checks."""
    header = ("| method | active edits | reliability | generalization | retention (first "
              "edits) | neighbour locality | compute + apply ms/edit |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for method, result in results.items():
        for n, r in sorted(result["checkpoints"].items(), key=lambda kv: int(kv[0])):
            ms = r["ms_per_edit"]
            lines.append(f"| {method} | {n} | {r['reliability']:.3f} | "
                         f"{r['generalization']:.3f} | {r['retention_first']:.3f} | "
                         f"{r['neighbour_locality']:.3f} | "
                         f"{ms['compute']:.0f} + {ms['apply']:.0f} |")
    removals = {m: r["removal"] for m, r in results.items() if "removal" in r}
    if removals:
        header = ("| method | removed of active | max relative weight error vs a fresh "
                  "build | same answers as the fresh build |")
        lines += ["", header, "|---|---|---|---|"]
        for method, r in removals.items():
            lines.append(f"| {method} | {r['removed']} of {r['active_before']} | "
                         f"{r['max_relative_weight_error']:.2e} | "
                         f"{'yes' if r['same_answers'] else 'no'} |")
    return "\n".join(lines)
