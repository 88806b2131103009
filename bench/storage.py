"""Storage: bytes per stored edit against a dense delta, Redis memory per edit, and how long
a replica takes to start from a store holding many edits (the snapshot load plus following
the rest of the log)."""

from __future__ import annotations

import asyncio
import statistics
import time

import redis.asyncio as aioredis
from safetensors.torch import save as st_save

from editor_core.combination import ActiveEdit
from editor_core.delta import EditDelta
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


async def _start_replica(w: Workload, store: EditStore) -> float:
    """Seconds for a fresh replica to catch up with the store."""
    ledger = WeightLedger.for_editor(w.editor)
    follower = LogFollower(ledger, store, ServiceMetrics())
    began = time.perf_counter()
    await follower.start()
    seconds = time.perf_counter() - began
    version = await store.version()
    assert ledger.version == version and len(ledger) == version, (len(ledger), version)
    ledger.reset()
    return seconds


async def _save_snapshot(w: Workload, store: EditStore, version: int) -> None:
    """The snapshot a replica that applied the change at the last refresh version saved."""
    ledger = WeightLedger.for_editor(w.editor)
    at = ledger.combiner.exact_version(version)
    active = await store.active_at(at)
    blobs = await store.deltas([i for i, _ in active])
    ledger.load([ActiveEdit(i, v, EditDelta.from_bytes(b))
                 for (i, v), b in zip(active, blobs)], at)
    await store.save_snapshot(at, st_save(ledger.combiner.exact_state()))
    ledger.reset()


def redis_memory_and_replay(w: Workload, redis_url: str, sizes: tuple[int, ...]) -> list[dict]:
    """Per store size: Redis memory per stored edit, and the startup of a fresh replica —
    read the active deltas, solve, follow the log to its end — without a saved snapshot of
    the sums (rebuilt from every edit), and with the one a running replica saves."""
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
            cold = await _start_replica(w, store)
            await _save_snapshot(w, store, size)  # what a running replica saved
            warm = await _start_replica(w, store)
            rows.append({"edits": size, "redis_bytes_per_edit": used / size,
                         "redis_mb": used / 2**20, "replay_s": warm,
                         "replay_without_snapshot_s": cold})
        await client.flushdb()
        await client.aclose()
        return rows

    return asyncio.run(run())
