"""Benchmark: adding or removing one edit with 1,000 active, per way of combining edits.

All on the demo LM's editable weights, in one run, the same edits for every row:
- ``sum``: ΔW = Σ ΔW_i (an exact running sum);
- ``ridge (exact solve)``: the joint ridge combination re-solved from its sums on every
  change (a Cholesky solve per weight), the baseline;
- ``ridge (rank update)``: the same combination updated by recursive least squares, with an
  exact refresh at every 64th version (what the service runs).

Each change includes writing the new weights into the model. Prints a table, then one JSON
line (the last line of output) with the medians and the ratio of rank update to exact solve.

Usage: ``python bench/lifelong_combination.py [--editor DIR] [--active 1000] [--changes 60]``.
"""

from __future__ import annotations

from editor_core import runtime

# isort: split

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.workload import edit_requests
from editor_core.checkpoint import load_editor
from editor_core.combination import (
    RIDGE_LAMBDA,
    ActiveEdit,
    CombinationConfig,
    RidgeCombiner,
    SumCombiner,
)
from editor_core.ledger import WeightLedger

REPO = Path(__file__).resolve().parent.parent


def timed_changes(ledger: WeightLedger, active: int, changes: int, seed: int
                  ) -> tuple[list[float], list[float]]:
    """Remove a random active edit, then add it back, ``changes`` times: (remove, add) ms."""
    rng = random.Random(seed)
    removes, adds = [], []
    stored = {e.edit_id: e.delta for e in ledger.active}
    for _ in range(changes):
        victim = f"e{rng.randrange(active)}"
        start = time.perf_counter()
        ledger.remove(victim)
        removes.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        ledger.apply(victim, stored[victim])
        adds.append((time.perf_counter() - start) * 1e3)
    return removes, adds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "checkpoints" / "demo-lm")
    parser.add_argument("--editor", type=Path, default=REPO / "checkpoints" / "demo-editor")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--active", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=60)
    parser.add_argument("--ridge-lambda", type=float, default=RIDGE_LAMBDA)
    args = parser.parse_args()
    runtime.configure_threads(args.threads)

    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    editor = load_editor(args.editor, model, tokenizer,  # ridge: its deltas carry their inputs
                         combination=CombinationConfig("ridge", args.ridge_lambda))
    stored = [editor.compute(r).compressed() for r in edit_requests(50)]

    combiners = {
        "sum": lambda: SumCombiner(editor.editable),
        "ridge (exact solve)": lambda: RidgeCombiner(editor.editable, args.ridge_lambda,
                                                     refresh_every=1),
        "ridge (rank update)": lambda: RidgeCombiner(editor.editable, args.ridge_lambda),
    }
    medians = {}
    print(f"Model {args.model}, {len(editor.editable)} editable weights, {args.active} active "
          f"edits, {args.changes} removals and additions each, {args.threads} threads")
    print("| combination | remove one (median ms) | add one (median ms) | add, p90 (ms) |")
    print("|---|---|---|---|")
    for name, make in combiners.items():
        ledger = WeightLedger(model, editor.editable, make())
        ledger.load([ActiveEdit(f"e{i}", i + 1, stored[i % len(stored)])
                     for i in range(args.active)], args.active)
        removes, adds = timed_changes(ledger, args.active, args.changes, seed=1)
        ledger.reset()
        medians[name] = (statistics.median(removes), statistics.median(adds))
        p90 = statistics.quantiles(adds, n=10)[-1]
        print(f"| {name} | {medians[name][0]:.1f} | {medians[name][1]:.1f} | {p90:.1f} |")
    exact, fast = medians["ridge (exact solve)"], medians["ridge (rank update)"]
    print(json.dumps({
        "active": args.active,
        "sum_remove_ms": round(medians["sum"][0], 2), "sum_add_ms": round(medians["sum"][1], 2),
        "ridge_remove_ms": round(fast[0], 2), "ridge_add_ms": round(fast[1], 2),
        "ridge_exact_remove_ms": round(exact[0], 2), "ridge_exact_add_ms": round(exact[1], 2),
        "rank_update_over_exact": round((fast[0] + fast[1]) / (exact[0] + exact[1]), 3)}))


if __name__ == "__main__":
    main()
