"""Redis under Sentinel, with real processes: a primary, two replicas, three sentinels.

The store follows the primary the sentinels name through a failover without a restart; a
change is acknowledged only once a replica holds it (``redis_wait_replicas``), so an edit
answered 201 outlives a ``kill -9`` of the primary; while no primary answers, writes get a
structured 503 with ``Retry-After`` and generation keeps answering.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from service.redis_connection import StoreConnection, connect
from service.settings import ServiceSettings
from service.store import EditStore, NewEdit, StoreError

from .redis_process import SentinelGroup
from .server_process import ServiceProcess
from .test_acceptance import generate
from .test_replicas import eventually, facts, info
from .test_store import record


@pytest.fixture()
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    started = SentinelGroup(tmp_path / "redis")
    try:
        yield started.start()
    finally:
        started.stop()


def sentinel_settings(group: SentinelGroup, tmp_path: Path, **extra) -> ServiceSettings:
    return ServiceSettings(redis_sentinels=group.addresses, data_dir=tmp_path, **extra)


def test_a_change_waits_for_a_replica_and_is_unconfirmed_without_one(
        group: SentinelGroup, tmp_path: Path) -> None:
    async def main() -> None:
        connection = StoreConnection(sentinel_settings(group, tmp_path))
        store = EditStore(connection.client, "fp", wait_replicas=2, wait_timeout_ms=300)
        try:
            made = (await store.add([NewEdit(record(subject="Ann"), b"d1")])).edits[0]
            for replica in group.servers[1:]:  # acknowledged: both replicas hold it
                assert redis.Redis(port=replica.port).exists(store.key("edit", made.id))
            group.servers[2].kill()
            with pytest.raises(StoreError) as refused:
                await store.add([NewEdit(record(subject="Bo"), b"d2")], idempotency_key="k")
            assert refused.value.code == "store_unconfirmed"
            assert await store.version() == 2  # the primary has it...
            for retry in (store.read_log("-", idempotency_key="k"),  # ...but a retry is not told
                          store.add([NewEdit(record(subject="Bo"), b"d2")],
                                    idempotency_key="k")):
                with pytest.raises(StoreError, match="1 of the 2 replicas"):
                    await retry
            assert (await store.read_log("-", idempotency_key="unknown"))[1] is None
        finally:
            await connection.close()

    asyncio.run(main())


def test_the_store_follows_a_failover_without_a_restart(group: SentinelGroup,
                                                        tmp_path: Path) -> None:
    async def main() -> None:
        connection = StoreConnection(sentinel_settings(group, tmp_path))
        store = EditStore(connection.client, "fp", wait_replicas=1)
        try:
            kept = (await store.add([NewEdit(record(subject="Ann"), b"d1")])).edits[0]
            old = group.primary()
            old.kill()
            refused = 0
            while True:  # what a client sees until a replica is promoted
                try:
                    await store.add([NewEdit(record(subject="Bo"), b"d2")],
                                    idempotency_key="k-bo")
                    break
                except (redis.ConnectionError, redis.TimeoutError, StoreError):
                    refused += 1  # no primary, or one not yet followed by a replica
                    await asyncio.sleep(0.1)
            new = group.wait_for_new_primary(old)
            assert new is not old and refused > 0
            assert [i for i, _ in await store.active()] == [kept.id, *(
                await store.read_log("-", idempotency_key="k-bo"))[1].ids]
            assert await store.version() == 2
        finally:
            await connection.close()

    asyncio.run(main())


def test_a_change_sent_to_a_replica_is_a_lost_primary_not_a_server_error(
        group: SentinelGroup) -> None:
    """A demoted primary answers a script's write with READONLY inside the script's error:
    the store takes it for an unavailable primary (503 and a retry), not a 500."""
    async def main() -> None:
        client = connect(group.servers[1].url)  # a replica
        waiting, alone = EditStore(client, "fp", wait_replicas=1), EditStore(client, "fp")
        try:
            for change in (waiting.add([NewEdit(record(subject="Ann"), b"d")]),
                           waiting.read_log("-", idempotency_key="k"),
                           waiting.rollback("x", by="b", at="t"),
                           alone.add([NewEdit(record(subject="Bo"), b"d")])):
                with pytest.raises(redis.ConnectionError, match="wrote to a replica"):
                    await change
        finally:
            await client.aclose()

    asyncio.run(main())


def test_settings_name_one_store() -> None:
    with pytest.raises(ValueError, match="not both"):
        ServiceSettings(redis_url="redis://127.0.0.1:1/0", redis_sentinels="127.0.0.1:2")
    with pytest.raises(ValueError, match="host:port"):
        ServiceSettings(redis_sentinels="127.0.0.1")
    assert ServiceSettings(redis_sentinels="a:1, b:2").redis_sentinels == ["a:1", "b:2"]


def post_until_acknowledged(service: ServiceProcess, body: dict, key: str,
                            refusals: list[str]) -> dict:
    """Post one edit as a client that keeps its Idempotency-Key: retried on each 503
    (recording its code) until stored; any other answer fails the test."""
    while True:
        try:
            answer = httpx.post(f"{service.base}/edits", json=body, timeout=120,
                                headers={"Idempotency-Key": key})
        except httpx.TransportError as exc:
            refusals.append(type(exc).__name__)
            continue
        if answer.status_code in (200, 201):
            return answer.json()
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"] == "1"
        refusals.append(answer.json()["error"]["code"])
        time.sleep(0.1)


def test_edits_acknowledged_across_a_primary_kill_are_kept_and_replicas_converge(
        group: SentinelGroup, tmp_path: Path, exported: Path) -> None:
    env = {"INSTRUCTEDIT_REDIS_SENTINELS": group.addresses,
           "INSTRUCTEDIT_REDIS_WAIT_REPLICAS": "2"}  # every replica: any may be promoted
    services = [ServiceProcess(tmp_path / f"r{i}", env=env) for i in (1, 2)]
    bodies = facts(exported, 6)
    refusals: list[str] = []
    try:
        for service in services:
            service.start()
        acknowledged = {}
        for i, body in enumerate(bodies[:3]):
            key = uuid.uuid4().hex
            acknowledged[key] = post_until_acknowledged(services[i % 2], body, key, refusals)
        old = group.primary()
        old.kill()
        promoted: list = []

        def operator() -> None:  # the killed server comes back as a replica of the new one
            promoted.append(group.wait_for_new_primary(old))
            old.replica_of = promoted[0].port
            old.start()

        restart = threading.Thread(target=operator)
        restart.start()
        with services[0].client() as c:  # generation answers on the weights it has
            assert generate(c, bodies[0]["prompt"])["version"] == 3
        for i, body in enumerate(bodies[3:]):  # through the failover
            key = uuid.uuid4().hex
            acknowledged[key] = post_until_acknowledged(services[i % 2], body, key, refusals)
        restart.join()
        new = promoted[0]
        assert refusals and set(refusals) <= {"store_unavailable", "store_unconfirmed"}

        store = redis.Redis(port=new.port, decode_responses=True)
        prefix = next(k for k in store.scan_iter("instructedit:*:version")).rsplit(":", 1)[0]
        stored = store.zrange(f"{prefix}:edits", 0, -1)
        ids = [a["id"] for a in acknowledged.values()]
        assert sorted(stored) == sorted(ids)  # every acknowledged edit, each once
        assert int(store.get(f"{prefix}:version")) == 6

        converged = eventually(lambda: all(
            info(s)["edit_version"] == 6 and info(s)["log"]["lag"] == 0 for s in services))
        states = [info(s) for s in services]
        assert states[0]["live_digest"] == states[1]["live_digest"]
        assert states[0]["active_edits"] == 6
        print(f"refused while failing over: {len(refusals)}; converged {converged:.2f} s")
    finally:
        for service in services:
            service.stop()
