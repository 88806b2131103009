"""Storage: bytes per stored edit against a dense delta, Redis memory per edit, and how long
a replica takes to start from a store holding many edits (read every active edit, build the
edit memory, follow the log to its end)."""

from __future__ import annotations

import asyncio
import statistics
import time

import redis.asyncio as aioredis

from service.claims import claims
from service.engine import stored_record
from service.follower import LogFollower
from service.metrics import ServiceMetrics
from service.schemas import EditRecord
from service.store import EditStore, NewEdit

from .workload import Workload, edit_requests


def stored_size(w: Workload, n: int = 64) -> dict:
    """Bytes of ``n`` distinct stored edits (the safetensors record: factors, routing keys,
    header) against their ΔW stored dense in fp32."""
    deltas = w.deltas(n)
    sizes = [len(d.to_bytes()) for d in deltas]
    return {"edits": n, "stored_bytes": statistics.mean(sizes),
            "stored_bytes_max": max(sizes), "dense_bytes": deltas[0].dense_nbytes(),
            "stored_over_dense": statistics.mean(sizes) / deltas[0].dense_nbytes()}


async def _start_replica(w: Workload, store: EditStore) -> float:
    """Seconds for a fresh replica to catch up with the store."""
    ledger = w.stack().ledger
    follower = LogFollower(ledger, store, ServiceMetrics())
    began = time.perf_counter()
    await follower.start()
    seconds = time.perf_counter() - began
    version = await store.version()
    assert ledger.version == version and len(ledger) == version, (len(ledger), version)
    ledger.reset()
    return seconds


def redis_memory_and_replay(w: Workload, redis_url: str, sizes: tuple[int, ...]) -> list[dict]:
    """Per store size: Redis memory per stored edit, and the startup of a fresh replica."""
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
                records = [EditRecord(task=r.task, prompt=r.prompt, target=r.target,
                                      subject=r.subject, instruction=r.prompt, created_at="",
                                      created_by="bench") for r in requests[start:stop]]
                await store.add([NewEdit(stored_record(record), d.to_bytes(), claims(record))
                                 for record, d in zip(records, deltas[start:stop])])
            used = (await client.info("memory"))["used_memory"] - before
            rows.append({"edits": size, "redis_bytes_per_edit": used / size,
                         "redis_mb": used / 2**20, "replay_s": await _start_replica(w, store)})
        await client.flushdb()
        await client.aclose()
        return rows

    return asyncio.run(run())
