"""The edit memory at scale: generation, adding and removing an edit with ``size`` active
entries (100,000 by default) against an empty memory, in one process.

Entries carry real routing keys and subjects of distinct made-up people, and zero factors:
what routing costs depends on the entries' keys and subjects, not on what their factors
change (a fired entry adds the same low-rank products whatever its values)."""

from __future__ import annotations

import random
import statistics
import time

import torch

from editor_core.combination import ActiveEdit
from editor_core.delta import EditDelta, RoutingKey, WeightFactors
from editor_core.generation import SamplingParams, TokenStream
from editor_core.routing_keys import subject_token_ids

from .timing import ms
from .workload import Workload, generation_prompts


def _entries(w: Workload, size: int, seed: int = 0) -> list[ActiveEdit]:
    rng = random.Random(seed)
    gate_width = next(e.d_in for e in w.editor.editable if e.module_name == w.routing.gate)
    zero = {e.name: WeightFactors(torch.zeros(1, e.d_in), torch.zeros(1, e.d_out), 1.0,
                                  ((0, 1),)) for e in w.editor.editable}
    letters = "bdfgklmnprstvz"
    vowels = "aeiou"
    out = []
    for i in range(size):
        name = " ".join("".join(rng.choice(letters) + rng.choice(vowels) for _ in range(3))
                        .capitalize() for _ in range(2))
        keys = torch.randn(2, gate_width)
        out.append(ActiveEdit(f"e{i:06d}", i + 1, EditDelta(
            zero, 1, None, (RoutingKey(keys, subject_token_ids(w.tokenizer, [name])),))))
    return out


def memory_at_scale(w: Workload, size: int, prompts: int, new_tokens: int, rounds: int
                    ) -> dict:
    """Tokens/s of greedy generation with ``size`` entries against none (interleaved
    rounds, medians), and the ms to add and to remove one edit at that size."""
    stack = w.stack()
    ledger = stack.ledger
    texts = generation_prompts(prompts)
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)

    def tokens_per_s() -> float:
        start, tokens = time.perf_counter(), 0
        for text in texts:
            stream = TokenStream(w.model, w.tokenizer, text, params, stack.routing)
            stream.run()
            tokens += stream.completion_tokens
        return tokens / (time.perf_counter() - start)

    entries = _entries(w, size + 1)
    build_s = time.perf_counter()
    ledger.load(entries[:size], size)
    build_s = time.perf_counter() - build_s
    full: list[float] = []
    empty: list[float] = []
    for _ in range(rounds):  # interleaved, so drift hits both alike
        ledger.load(entries[:size], ledger.version + 1)
        full.append(tokens_per_s())
        ledger.load([], ledger.version + 1)
        empty.append(tokens_per_s())
    ledger.load(entries[:size], ledger.version + 1)
    extra = entries[size]
    add_ms = statistics.median(ms(lambda: (ledger.apply(extra.edit_id, extra.delta),
                                           ledger.remove(extra.edit_id))) for _ in range(5))
    ledger.reset()
    return {"entries": size, "build_s": build_s,
            "tokens_per_s": statistics.median(full), "none_tokens_per_s": statistics.median(empty),
            "over_none": statistics.median(full) / statistics.median(empty),
            "add_and_remove_one_ms": add_ms}
