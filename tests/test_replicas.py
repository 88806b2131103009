"""Acceptance: several ``instructedit serve`` processes on one real Redis follow one edit log.

Replicas are started with ``ridge_refresh_every`` and ``snapshot_every`` 4, so a replica
that (re)starts loads a snapshot at a refresh version and follows the log from there — the
path that must give the same weights, bit for bit, as a replica that saw every change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from editor_lab.training.examples import load_task_records

from .redis_process import RedisProcess
from .server_process import ServiceProcess
from .test_acceptance import EDIT, PROMPT, TARGET, generate

SETTINGS = {"INSTRUCTEDIT_RIDGE_REFRESH_EVERY": "4", "INSTRUCTEDIT_SNAPSHOT_EVERY": "4"}


@pytest.fixture()
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


def replica(tmp_path: Path, name: str, redis_url: str) -> ServiceProcess:
    return ServiceProcess(tmp_path / name, "--redis-url", redis_url, env=SETTINGS)


def facts(exported: Path, n: int) -> list[dict]:
    """``n`` held-out facts, none about the subject of ``EDIT``."""
    records = [r for r in load_task_records(exported, ["counterfact"], "test")["counterfact"]
               if r.subject != EDIT["subject"]][:n]
    return [{"task": "counterfact", "prompt": r.prompt, "target": r.target_new,
             "subject": r.subject} for r in records]


# How long ``eventually`` polls before it calls a wait a hang. Not a latency promise: on a
# loaded machine (two cores, several services) a change may take seconds to reach a replica.
HANG_GUARD_S = 120.0


def eventually(check: Callable[[], bool], guard: float = HANG_GUARD_S) -> float:
    """Poll ``check`` until it holds; how long that took. ``guard`` only stops a hang."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < guard, f"still not so after {guard} s: a hang"
        time.sleep(0.02)
    return time.monotonic() - start


def info(service: ServiceProcess) -> dict:
    return httpx.get(f"{service.base}/info").json()


def answers_with_target(service: ServiceProcess) -> bool:
    with service.client() as c:
        return generate(c, PROMPT)["text"].strip().startswith(TARGET)


def same_weights(services: list[ServiceProcess]) -> bool:
    states = [info(s) for s in services]
    return len({(s["live_digest"], s["edit_version"]) for s in states}) == 1


def test_three_replicas_follow_one_log(tmp_path: Path, redis_process: RedisProcess,
                                       exported: Path) -> None:
    r1, r2, r3 = (replica(tmp_path, f"r{i}", redis_process.url) for i in (1, 2, 3))
    try:
        for r in (r1, r2, r3):
            r.start()
        assert not answers_with_target(r2)
        with r1.client() as c:
            made = c.post("/edits", json=EDIT)
        assert made.status_code == 201, made.text
        for other in (r2, r3):  # the edit reaches the other replicas
            eventually(lambda other=other: answers_with_target(other))
        assert same_weights([r1, r2, r3])

        # Edits posted to different replicas get one global order of versions.
        versions = []
        for body, target in zip(facts(exported, 6), [r1, r2, r3] * 2):
            with target.client() as c:
                versions.append(c.post("/edits", json=body).json()["version"])
        assert versions == list(range(2, 8))

        with r3.client() as c:
            c.post(f"/edits/{made.json()['id']}/rollback").raise_for_status()
        for other in (r1, r2):
            eventually(lambda other=other: not answers_with_target(other))
        eventually(lambda: same_weights([r1, r2, r3]))
        assert {info(r)["edit_version"] for r in (r1, r2, r3)} == {8}
        log = info(r2)["log"]
        assert log["lag"] == 0 and log["store_up"] and log["applied_version"] == 8

        # A rollback to a version, posted to one replica, removes the range everywhere.
        with r2.client() as c:
            rolled = c.post("/edits/rollback", json={"to_version": 4}).json()
        assert len(rolled["rolled_back"]) == 3
        eventually(lambda: same_weights([r1, r2, r3]))
        assert {info(r)["active_edits"] for r in (r1, r2, r3)} == {3}
    finally:
        for r in (r1, r2, r3):
            r.stop()


def test_a_killed_replica_catches_up_before_it_is_ready(tmp_path: Path,
                                                        redis_process: RedisProcess,
                                                        exported: Path) -> None:
    r1, r2 = replica(tmp_path, "r1", redis_process.url), replica(tmp_path, "r2",
                                                                 redis_process.url)
    bodies = facts(exported, 12)
    try:
        r1.start()
        r2.start()
        with r1.client() as c:
            ids = [c.post("/edits", json=b).json()["id"] for b in bodies[:3]]
        eventually(lambda: same_weights([r1, r2]))
        r2.kill()
        with r1.client() as c:  # more edits and rollbacks while it is down
            ids += [c.post("/edits", json=b).json()["id"] for b in bodies[3:10]]
            c.post(f"/edits/{ids[1]}/rollback").raise_for_status()
            c.post(f"/edits/{ids[6]}/rollback").raise_for_status()
        expected = info(r1)
        assert expected["edit_version"] == 12  # a snapshot at 12, nothing to follow
        with r1.client() as c:
            c.post("/edits", json=bodies[10]).raise_for_status()  # version 13: follows it
        expected = info(r1)
        r2.start()  # returns at the first 200 from /readyz
        ready = httpx.get(f"{r2.base}/readyz").json()
        assert ready["version"] == 13 and ready["replayed"] == 9
        state = info(r2)
        assert (state["live_digest"], state["active_edits"]) == (expected["live_digest"], 9)
        # ...and it keeps following.
        with r1.client() as c:
            c.post(f"/edits/{ids[0]}/rollback").raise_for_status()
        eventually(lambda: same_weights([r1, r2]))
    finally:
        r1.stop()
        r2.stop()


def store_up(client: httpx.Client) -> float:
    lines = client.get("/metrics").text.splitlines()
    return float(next(line for line in lines
                      if line.startswith("instructedit_store_up ")).split()[1])


def test_without_redis_generation_answers_edits_get_503_and_it_recovers(
        tmp_path: Path, redis_process: RedisProcess, exported: Path) -> None:
    """Redis crashes (kill -9, not a clean stop): generation goes on, changes get 503,
    ``instructedit_store_up`` is 0; restarted on its append-only file (``appendfsync
    everysec``), it has every acknowledged edit, and a retry with the Idempotency-Key of
    a refused edit makes that edit once."""
    service = replica(tmp_path, "r1", redis_process.url)
    bodies = facts(exported, 4)
    try:
        service.start()
        with service.client() as c:
            acknowledged = [c.post("/edits", json=b).json()["id"] for b in bodies[:2]]
            before = info(service)
            edited = generate(c, bodies[0]["prompt"])
            assert store_up(c) == 1
            redis_process.kill()
            assert generate(c, bodies[0]["prompt"]) == edited  # on the same edited weights
            key = {"Idempotency-Key": "retried-after-the-crash"}
            refused = c.post("/edits", json=bodies[2], headers=key)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "store_unavailable"
            assert refused.headers["Retry-After"] == "1"
            assert c.get("/edits").status_code == 503
            eventually(lambda: c.get("/readyz").status_code == 503)
            assert c.get("/readyz").json()["error"]["code"] == "store_unavailable"
            eventually(lambda: store_up(c) == 0)
            assert info(service)["live_digest"] == before["live_digest"]  # nothing changed

            redis_process.start()  # same data directory: the append-only file
            eventually(lambda: c.get("/readyz").status_code == 200)
            assert store_up(c) == 1
            made = c.post("/edits", json=bodies[2], headers=key)
            assert made.status_code == 201, made.text
            again = c.post("/edits", json=bodies[2], headers=key)
            assert again.status_code == 201 and again.json()["id"] == made.json()["id"]
            stored = {e["id"] for e in c.get("/edits", params={"status": "active"}
                                             ).json()["edits"]}
            assert stored == {*acknowledged, made.json()["id"]}
            assert info(service)["edit_version"] == 3
        assert service.proc.poll() is None  # never restarted
    finally:
        service.stop()
