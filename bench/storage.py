"""Storage: bytes per stored edit against a dense delta, Redis memory per edit, and how long
a replica takes to start from a store holding many edits (the snapshot load plus following
the rest of the log)."""

from __future__ import annotations

import asyncio
import statistics
import time

import redis.asyncio as aioredis

from editor_core.ledger import WeightLedger
from service.follower import LogFollower
from service.metrics import ServiceMetrics
from service.store import EditStore, NewEdit

from .workload import Workload, edit_requests


def stored_size(w: Workload) -> dict:
    """Stored (compressed, with keys) bytes of an edit over its ΔW stored dense in fp32."""
    deltas = w.deltas(16)
    ratios = [d.nbytes() / d.dense_nbytes() for d in deltas]
    return {"stored_bytes": statistics.median(d.nbytes() for d in deltas),
            "dense_bytes": deltas[0].dense_nbytes(),
            "stored_over_dense": statistics.median(ratios)}


def redis_memory_and_replay(w: Workload, redis_url: str, sizes: tuple[int, ...]) -> list[dict]:
    """Per store size: Redis memory per stored edit, and the startup of a fresh replica
    (read the snapshot's deltas, solve, follow the log to its end)."""
    deltas = w.deltas(max(sizes))
    requests = edit_requests(max(sizes))

    async def run() -> list[dict]:
        client = aioredis.from_url(redis_url)
        rows = []
        for size in sizes:
            await client.flushdb()
            before = (await client.info("memory"))["used_memory"]
            store = EditStore(client, f"bench-{size}")
            for start in range(0, size, 64):  # a batch per script, as POST /edits/batch
                stop = min(start + 64, size)
                await store.add([NewEdit({"task": r.task, "prompt": r.prompt,
                                          "target": r.target, "subject": r.subject},
                                         d.to_bytes(), (f"prompt:{i}",))
                                 for i, (r, d) in enumerate(zip(requests[start:stop],
                                                                deltas[start:stop]), start)])
            used = (await client.info("memory"))["used_memory"] - before
            ledger = WeightLedger.for_editor(w.editor)
            follower = LogFollower(ledger, store, ServiceMetrics())
            began = time.perf_counter()
            await follower.start()
            seconds = time.perf_counter() - began
            assert len(ledger) == size and ledger.version == size, (len(ledger), ledger.version)
            ledger.reset()
            rows.append({"edits": size, "redis_bytes_per_edit": used / size,
                         "redis_mb": used / 2**20, "replay_s": seconds})
        await client.flushdb()
        await client.aclose()
        return rows

    return asyncio.run(run())
