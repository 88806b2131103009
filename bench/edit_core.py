"""Micro-benchmark of the editing core on the demo LM (ratios measured in one run).

Prints, as a table and then as one JSON line (the last line of output):
- ``edit_over_fwdbwd``: one edit computation (capture + hypernetwork + compression into the
  stored factors) divided by one plain forward+backward of the base model on the same input
  (the instruction-wrapped prompt and its target);
- ``remove_one_of_1000_ms``: removing one edit from a ledger holding 1,000 active edits;
- ``stored_bytes_ratio``: bytes of a stored edit's factors over the same ΔW stored dense.

Usage: ``python bench/edit_core.py [--model checkpoints/demo-lm] [--editor DIR]``. Without a
trained editor it uses a fresh one (rank 256): the work per edit is the same.
"""

from __future__ import annotations

from editor_core import runtime  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from editor_core.checkpoint import load_editor
from editor_core.delta import STORE_DTYPE, STORE_REL_TOL
from editor_core.editor import EditRequest, Editor
from editor_core.encoding import target_nll
from editor_core.hypernetwork import Hypernetwork, HypernetworkConfig
from editor_core.ledger import WeightLedger
from editor_core.specs import resolve_editable
from editor_core.world import WorldConfig, build_world
from editor_core.world.templates import RELATIONS_BY_NAME

REPO = Path(__file__).resolve().parent.parent


def requests(n: int) -> list[EditRequest]:
    world = build_world(WorldConfig())
    rng = random.Random(0)
    people = world.of_kind("person", seen=True)
    countries = world.of_kind("country")
    out = []
    for person in rng.sample(people, n):
        t = RELATIONS_BY_NAME["citizenship"].templates[0]
        out.append(EditRequest("counterfact", t.prompt(person.name),
                               rng.choice(countries).name, subject=person.name))
    return out


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "checkpoints" / "demo-lm")
    parser.add_argument("--editor", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--active", type=int, default=1000)
    args = parser.parse_args()
    runtime.configure_threads(args.threads)

    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if args.editor:
        editor = load_editor(args.editor, model, tokenizer)
    else:
        hyper = Hypernetwork(resolve_editable(model), HypernetworkConfig(rank=256)).eval()
        editor = Editor(model, tokenizer, hyper)
    reqs = requests(50)
    batch = editor.encode([reqs[0]])

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        target_nll(logits, batch.labels).sum().backward()

    def edit() -> None:
        editor.compute(reqs[0]).compressed()

    for _ in range(3):  # warm up both paths
        forward_backward()
        edit()
    fwdbwd, edit_ms = [], []
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        fwdbwd.append(median_ms(forward_backward, 1))
        edit_ms.append(median_ms(edit, 1))
    model.zero_grad(set_to_none=True)
    fwdbwd_ms, edit_med = statistics.median(fwdbwd), statistics.median(edit_ms)

    raw = [editor.compute(r) for r in reqs]
    stored = [d.compressed() for d in raw]
    ratio = statistics.mean(d.nbytes() / d.dense_nbytes() for d in stored)
    raw_ratio = statistics.mean(d.nbytes() / d.dense_nbytes() for d in raw)
    error = max(((r.factors[n].dense() - s.factors[n].dense()).norm()
                 / r.factors[n].dense().norm()).item()
                for r, s in zip(raw, stored) for n in r.factors)

    ledger = WeightLedger(model, editor.editable)
    for i in range(args.active):
        ledger.apply(f"e{i}", stored[i % len(stored)])
    victims = random.Random(1).sample(range(args.active), 20)
    remove_times = []
    for v in victims:
        remove_times.append(median_ms(lambda v=v: ledger.remove(f"e{v}"), 1))
    remove_ms = statistics.median(remove_times)
    reset_ms = median_ms(ledger.reset, 1)

    rows = [
        ("plain forward+backward of the base model (ms)", f"{fwdbwd_ms:.2f}"),
        ("one edit computation, stored form (ms)", f"{edit_med:.2f}"),
        ("edit / forward+backward", f"{edit_med / fwdbwd_ms:.2f}"),
        (f"remove one edit of {args.active} active (ms)", f"{remove_ms:.2f}"),
        (f"reset {args.active - len(victims)} edits to pristine (ms)", f"{reset_ms:.2f}"),
        ("stored edit bytes / dense delta bytes", f"{ratio:.4f}"),
        ("  the hypernetwork's raw factors (fp32) / dense", f"{raw_ratio:.4f}"),
        (f"  worst relative error of a stored ΔW (tolerance {STORE_REL_TOL:g}, "
         f"{str(STORE_DTYPE).removeprefix('torch.')})", f"{error:.4f}"),
    ]
    print(f"Model {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M), "
          f"{len(editor.editable)} editable weights, {args.threads} threads, "
          f"editor: {args.editor or 'fresh (untrained), rank 256'}")
    print("| measurement | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(json.dumps({"edit_over_fwdbwd": round(edit_med / fwdbwd_ms, 3),
                      "remove_one_of_1000_ms": round(remove_ms, 3),
                      "stored_bytes_ratio": round(ratio, 4)}))


if __name__ == "__main__":
    main()
