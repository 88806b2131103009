"""What waiting for Redis replicas costs a change: store adds acknowledged by the primary
alone against adds acknowledged once both replicas hold them (``WAIT 2``), alternating in
one run on a primary with two replicas and three Sentinels on this machine.

    python -m bench.redis_wait [--adds 300] [--json bench/redis-wait.json]

Each add stores one edit record and a delta of the size an edit of the demo LM stores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from service.engine import stored_record
from service.redis_connection import StoreConnection
from service.schemas import EditRecord
from service.settings import ServiceSettings
from service.store import EditStore, NewEdit
from tests.redis_process import SentinelGroup

DELTA_BYTES = 40_000  # about what one demo-LM edit stores


def _record(i: int) -> EditRecord:
    return EditRecord(task="counterfact", prompt=f"Person {i} is a citizen of", target="X",
                      subject=f"Person {i}", instruction="-", created_at="t", created_by="b")


async def _measure(addresses: str, adds: int) -> dict:
    connection = StoreConnection(ServiceSettings(redis_sentinels=addresses))
    stores = {"primary alone": EditStore(connection.client, "wait-0"),
              "WAIT 2": EditStore(connection.client, "wait-2", wait_replicas=2)}
    times: dict[str, list[float]] = {name: [] for name in stores}
    delta = bytes(DELTA_BYTES)
    try:
        for i in tqdm(range(adds), desc="adds", unit="pair"):
            for name, store in (stores.items() if i % 2 else reversed(stores.items())):
                start = time.perf_counter()
                await store.add([NewEdit(stored_record(_record(i)), delta)])
                times[name].append((time.perf_counter() - start) * 1000)
    finally:
        await connection.close()
    out = {name: {"p50_ms": round(statistics.median(t), 3),
                  "p95_ms": round(statistics.quantiles(t, n=20)[-1], 3)}
           for name, t in times.items()}
    out["added_p50_ms"] = round(out["WAIT 2"]["p50_ms"] - out["primary alone"]["p50_ms"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adds", type=int, default=300)
    parser.add_argument("--json", type=Path, default=Path("bench/redis-wait.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        group = SentinelGroup(Path(tmp)).start()
        try:
            result = asyncio.run(_measure(group.addresses, args.adds))
        finally:
            group.stop()
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
