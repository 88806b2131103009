"""Day-two operations on real processes (redis-server, ``instructedit serve``, the CLI):
an export, a wipe and an import give the same answers; a Redis snapshot restored into a
fresh service gives the same state; pruned deltas never stop a replica."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from typer.testing import CliRunner

from instructedit_cli import app

from .redis_process import RedisProcess
from .server_process import ServiceProcess
from .test_acceptance import EDIT, PROMPT, REPHRASE, UNRELATED, generate
from .test_replicas import eventually, facts

runner = CliRunner()


@dataclass
class State:
    """What a client can see of a service's edits: they must match exactly."""

    answers: dict[str, str]
    listing: dict
    info: dict

    @classmethod
    def of(cls, service: ServiceProcess, prompts: list[str]) -> State:
        with service.client() as c:
            info = c.get("/info").json()
            return cls({p: generate(c, p)["text"] for p in prompts},
                       c.get("/edits", params={"limit": 100}).json(),
                       {k: info[k] for k in ("edit_version", "active_edits", "live_digest",
                                             "fingerprint")})


@dataclass
class Edited:
    redis: RedisProcess
    service: ServiceProcess
    prompts: list[str]
    state: State
    backup: Path  # dump.rdb, saved while the service ran
    export: Path  # instructedit edits export, while the service ran


@pytest.fixture(scope="module")
def edited(tmp_path_factory: pytest.TempPathFactory, exported: Path) -> Iterator[Edited]:
    """A service on a real Redis with two edits made and a third made and rolled back."""
    root = tmp_path_factory.mktemp("ops")
    server = RedisProcess(root / "redis").start()
    service = ServiceProcess(root / "service", "--redis-url", server.url).start()
    try:
        other, dropped = facts(exported, 2)
        with service.client() as c:
            for body in (EDIT, other, dropped):
                made = c.post("/edits", json=body)
                assert made.status_code == 201, made.text
            c.post(f"/edits/{made.json()['id']}/rollback").raise_for_status()
        prompts = [PROMPT, REPHRASE, other["prompt"], dropped["prompt"], *UNRELATED]
        state = State.of(service, prompts)
        assert state.info["edit_version"] == 4 and state.info["active_edits"] == 2
        client = redis.Redis.from_url(server.url)
        client.save()
        backup = root / "backup.rdb"
        shutil.copy(server.data_dir / "dump.rdb", backup)
        export = root / "edits.jsonl"
        done = runner.invoke(app, ["edits", "export", str(export), "--redis-url", server.url])
        assert done.exit_code == 0, done.output
        assert "Exported 3 edits" in done.output
        service.stop()
        yield Edited(server, service, prompts, state, backup, export)
    finally:
        service.stop()
        server.stop()


def test_an_export_a_wipe_and_an_import_give_the_same_answers(edited: Edited) -> None:
    lines = edited.export.read_text().splitlines()
    header = json.loads(lines[0])
    assert (header["version"], header["edits"], header["events"]) == (4, 3, 4)
    assert header["model_fingerprint"] == edited.state.info["fingerprint"]
    redis.Redis.from_url(edited.redis.url).flushall()
    url = ["--redis-url", edited.redis.url]
    done = runner.invoke(app, ["edits", "import", str(edited.export), *url])
    assert done.exit_code == 0, done.output
    assert "Imported 3 edits" in done.output
    again = runner.invoke(app, ["edits", "import", str(edited.export), *url])
    assert again.exit_code == 1 and "already has edits" in again.output
    replaced = runner.invoke(app, ["edits", "import", str(edited.export), "--replace", *url])
    assert replaced.exit_code == 0, replaced.output
    edited.service.start()
    try:
        assert State.of(edited.service, edited.prompts) == edited.state
        reexport = edited.export.with_name("again.jsonl")
        assert runner.invoke(app, ["edits", "export", str(reexport), *url]).exit_code == 0
        assert [json.loads(x) for x in reexport.read_text().splitlines()] == [
            json.loads(x) for x in lines]
    finally:
        edited.service.stop()


def test_an_import_refuses_another_model_and_bad_lines_and_writes_nothing(
        edited: Edited, tmp_path: Path) -> None:
    lines = edited.export.read_text().splitlines()
    client = redis.Redis.from_url(edited.redis.url)
    client.flushall()
    header = json.loads(lines[0]) | {"model_fingerprint": "0" * 64}
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    done = runner.invoke(app, ["edits", "import", str(other), "--redis-url", edited.redis.url])
    assert done.exit_code == 1 and "edits of base model 0000000000000000" in done.output
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([*lines[:3], lines[3][:-20], *lines[4:]]) + "\n")
    done = runner.invoke(app, ["edits", "import", str(broken), "--redis-url", edited.redis.url])
    assert done.exit_code == 1 and "line 4" in done.output
    short = tmp_path / "short.jsonl"  # every edit is written before the count is checked
    short.write_text("\n".join(lines[:-1]) + "\n")
    done = runner.invoke(app, ["edits", "import", str(short), "--redis-url", edited.redis.url])
    assert done.exit_code == 1 and "the file ends early" in done.output
    assert client.dbsize() == 0  # and deleted again


def test_a_redis_snapshot_restores_into_a_fresh_service(edited: Edited,
                                                         tmp_path: Path) -> None:
    folder = tmp_path / "restored"
    folder.mkdir()
    shutil.copy(edited.backup, folder / "dump.rdb")
    loaded = RedisProcess(folder, "--appendonly", "no").start()  # AOF on would load no data
    try:
        client = redis.Redis.from_url(loaded.url)
        client.config_set("appendonly", "yes")  # writes the AOF from the loaded data
        eventually(lambda: _aof_written(client))
    finally:
        loaded.stop()
    server = RedisProcess(folder).start()  # as it runs from now on, from the AOF
    service = ServiceProcess(tmp_path / "service", "--redis-url", server.url)
    try:
        service.start()
        assert State.of(service, edited.prompts) == edited.state
    finally:
        service.stop()
        server.stop()


def _aof_written(client: redis.Redis) -> bool:
    found = client.info("persistence")
    return (found["aof_enabled"] == 1 and found["aof_rewrite_in_progress"] == 0
            and found["aof_rewrite_scheduled"] == 0)


def await_expiry(pubsub, key: str, seconds: float = 10) -> None:
    """Block until Redis reports ``key`` expired (a keyspace notification)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=deadline - time.monotonic())
        if message and message["type"] == "message" and message["data"] == key.encode():
            return
    raise AssertionError(f"{key} did not expire within {seconds} s")


def test_a_replica_that_needed_a_pruned_delta_rebuilds_from_the_active_edits(
        tmp_path: Path, exported: Path) -> None:
    server = RedisProcess(tmp_path / "redis").start()
    env = {"INSTRUCTEDIT_ROLLED_BACK_RETENTION_S": "0.5"}
    a, b = (ServiceProcess(tmp_path / n, "--redis-url", server.url, env=env) for n in "ab")
    client = redis.Redis.from_url(server.url)
    client.config_set("notify-keyspace-events", "Ex")
    pubsub = client.pubsub()
    pubsub.subscribe("__keyevent@0__:expired")
    try:
        a.start()
        b.start()
        with a.client() as c:
            kept = c.post("/edits", json=EDIT)
            assert kept.status_code == 201, kept.text
        eventually(lambda: _info(b)["edit_version"] == 1)
        os.kill(b.proc.pid, signal.SIGSTOP)  # b lags from here on
        try:
            with a.client() as c:
                made = c.post("/edits", json=facts(exported, 1)[0])
                assert made.status_code == 201, made.text
                edit_id = made.json()["id"]
                c.post(f"/edits/{edit_id}/rollback").raise_for_status()
            delta = next(k.decode() for k in client.keys(f"*:delta:{edit_id}"))
            assert 0 < client.pttl(delta) <= 500
            assert client.pttl(delta.replace(edit_id, kept.json()["id"])) == -1
            await_expiry(pubsub, delta)
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
        # b's log says apply (pruned delta), then rollback: it rebuilds from the active set
        eventually(lambda: _info(b)["edit_version"] == 3)
        assert _info(b)["live_digest"] == _info(a)["live_digest"]
        with a.client() as ca, b.client() as cb:
            assert generate(cb, PROMPT)["text"] == generate(ca, PROMPT)["text"]
            record = cb.get(f"/edits/{edit_id}").json()  # the record stays for history
            assert (record["status"], record["rolled_back_version"]) == ("rolled_back", 3)
        assert "rebuilding from the active edits" in b.logs()
    finally:
        pubsub.close()
        a.stop()
        b.stop()
        server.stop()


def _info(service: ServiceProcess) -> dict:
    return httpx.get(f"{service.base}/info").json()


def test_retention_is_refused_with_the_ridge_combination(redis_socket: str,
                                                         tmp_path: Path) -> None:
    """A ridge replica that starts between refresh versions replays rolled-back edits."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import ServiceSettings

    settings = ServiceSettings(combination="ridge", rolled_back_retention_s=60,
                               redis_url=f"unix://{redis_socket}", data_dir=tmp_path)
    with pytest.raises(ValueError, match="rolled_back_retention_s cannot be used with the "
                                         "ridge combination"):
        with TestClient(create_app(settings)):
            pass
