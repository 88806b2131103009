"""Promises the documentation makes about the HTTP service, each tested as the docs state it
(docs/errors.md, docs/store-and-replicas.md, docs/deploy.md), in process on a real Redis."""

from __future__ import annotations

import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import service.batcher
from editor_core.combination import CombinationConfig
from service.app import create_app
from service.lifecycle import store_key
from service.settings import ApiKey, ServiceSettings

from .redis_process import RedisProcess
from .test_app import EDIT, PROMPT, _samples
from .test_replicas import eventually

HANG_GUARD_S = 120.0  # how long a wait may take before it is called a hang
EDIT_KEY = "edit-key-0123456789"


@pytest.fixture()
def settings(redis_socket: str, tmp_path: Path) -> ServiceSettings:
    return ServiceSettings(redis_url=f"unix://{redis_socket}", data_dir=tmp_path, threads=2)


class Gate:
    """Holds generations inside the decoder (after start-up's warm-up) until opened."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.closed = False
        self.entered = threading.Event()
        self.opened = threading.Event()
        decode = service.batcher.generate_together

        def held(*args, **kwargs):
            if self.closed:
                self.entered.set()
                assert self.opened.wait(HANG_GUARD_S), "the gate was never opened"
            return decode(*args, **kwargs)

        monkeypatch.setattr(service.batcher, "generate_together", held)


def sse_events(text: str) -> list[tuple[str, dict]]:
    """(event, data) of each server-sent event in a finished stream's body."""
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            out.append((fields["event"], json.loads(fields.get("data", "null"))))
    return out


def test_queries_beyond_max_concurrent_generations_get_429(
        settings: ServiceSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/errors.md: 429 ``busy`` with more queries running than
    ``max_concurrent_generations`` (``Retry-After: 1``); the running one is unaffected."""
    settings.limits.max_concurrent_generations = 1
    gate = Gate(monkeypatch)
    body = {"prompt": PROMPT, "max_new_tokens": 3}
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(1) as pool:
        gate.closed = True
        running = pool.submit(client.post, "/generate", json=body)
        assert gate.entered.wait(HANG_GUARD_S), "the first generation never started"
        refused = [client.post("/generate", json=body),
                   client.post("/generate", json={**body, "stream": True}),
                   client.post("/score", json={"prompt": PROMPT, "targets": [" Veiistan"]})]
        for response in refused:
            assert response.status_code == 429, response.text
            assert response.json()["error"]["code"] == "busy"
            assert response.headers["Retry-After"] == "1"
        gate.opened.set()
        assert running.result(HANG_GUARD_S).status_code == 200
        assert client.post("/generate", json=body).status_code == 200  # the slot came back


def test_a_streamed_generation_that_fails_ends_with_an_error_event(
        settings: ServiceSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/errors.md: once a stream has started, a failure is an ``error`` event
    (``generation_failed``) with the usual error body, counted like any error."""
    with TestClient(create_app(settings)) as client:
        def broken(*args, **kwargs):
            raise RuntimeError("the decoder broke")
            yield  # a generator, as the real one

        monkeypatch.setattr(service.batcher, "generate_together", broken)
        response = client.post("/generate", json={"prompt": PROMPT, "stream": True})
        assert response.status_code == 200  # the stream had started
        events = sse_events(response.text)
        assert [e for e, _ in events][-1] == "error"
        error = events[-1][1]["error"]
        assert error["code"] == "generation_failed" and "decoder broke" in error["message"]
        assert set(error) == {"code", "message", "details"}
        samples = _samples(client.get("/metrics").text)
        assert samples['instructedit_errors_total{code="generation_failed"}'] == 1


def test_the_event_stream_says_store_unavailable_when_redis_is_away(
        tmp_path: Path) -> None:
    """docs/errors.md: ``GET /events`` ends with an ``error`` event (``store_unavailable``)
    when Redis stops answering (here a crashed Redis, kill -9)."""
    redis = RedisProcess(tmp_path / "redis").start()
    try:
        settings = ServiceSettings(redis_url=redis.url, data_dir=tmp_path / "data", threads=2)
        with TestClient(create_app(settings)) as client:
            redis.kill()
            response = client.get("/events")
            assert response.status_code == 200
            events = sse_events(response.text)
            assert [e for e, _ in events] == ["error"]
            error = events[0][1]["error"]
            assert error["code"] == "store_unavailable"
            assert set(error) == {"code", "message", "details"}
            samples = _samples(client.get("/metrics").text)
            assert samples['instructedit_errors_total{code="store_unavailable"}'] >= 1
    finally:
        redis.stop()


def test_readyz_says_catching_up_while_the_replica_applies_the_log(
        settings: ServiceSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/store-and-replicas.md: ``/readyz`` answers 503 ``catching_up`` while a
    replica lags: here one replica holds another's edit, read from the log, half-way."""
    with TestClient(create_app(settings)) as editing, \
            TestClient(create_app(settings)) as lagging:
        ledger = lagging.app.state.live.ledger
        entered, release = threading.Event(), threading.Event()
        apply = ledger.apply

        def slow_apply(*args, **kwargs):
            entered.set()
            assert release.wait(HANG_GUARD_S), "never released"
            return apply(*args, **kwargs)

        monkeypatch.setattr(ledger, "apply", slow_apply)
        assert editing.post("/edits", json=EDIT).status_code == 201
        assert entered.wait(HANG_GUARD_S), "the lagging replica never read the edit"
        busy = lagging.get("/readyz")
        assert busy.status_code == 503, busy.text
        assert busy.json()["error"]["code"] == "catching_up"
        assert busy.json()["error"]["details"] == {"lag": 1}
        release.set()
        eventually(lambda: lagging.get("/readyz").status_code == 200)
        assert lagging.get("/info").json()["edit_version"] == 1


def test_every_error_response_is_counted_by_its_code(
        settings: ServiceSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/errors.md: every error is a ``{"error": ...}`` body counted in
    ``instructedit_errors_total{code}``: the counts equal the codes the client saw."""
    settings.api_keys = [ApiKey(name="reader", key="read-key-0123456789", scope="read"),
                         ApiKey(name="editor", key=EDIT_KEY, scope="edit")]
    settings.limits.max_body_bytes = 4096
    settings.limits.max_queued_edits = 16
    edit = {"Authorization": f"Bearer {EDIT_KEY}"}
    read = {"Authorization": "Bearer read-key-0123456789"}
    raw = {**edit, "content-type": "application/json"}
    with TestClient(create_app(settings)) as client:
        made = client.post("/edits", json=EDIT, headers=edit)
        assert made.status_code == 201
        responses = [
            client.post("/generate", json={"prompt": PROMPT}),  # 401
            client.post("/generate", json={"prompt": PROMPT}, headers={
                "Authorization": "Bearer wrong-key-0123456789"}),  # 401
            client.post("/edits", json=EDIT, headers=read),  # 403
            client.get("/edits/nope", headers=read),  # 404
            client.post("/edits", json={**EDIT, "task": "poetry"}, headers=edit),  # 422
            client.post("/edits", json={**EDIT, "prompt": ""}, headers=edit),
            client.post("/edits", content=b'{"task": ', headers=raw),  # 400
            client.post("/edits", content=b"x" * 5000, headers=raw),  # 413
            client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 10_000},
                        headers=read),
            client.post(f"/edits/{made.json()['id']}/rollback", headers=edit),  # 200
            client.post(f"/edits/{made.json()['id']}/rollback", headers=edit),  # 409
            client.post("/edits", json=EDIT, headers={**edit, "Idempotency-Key": "k"}),
            client.post("/edits", json={**EDIT, "target": "Faemovia"},
                        headers={**edit, "Idempotency-Key": "k"}),  # 409 reused
        ]
        seen = Counter(r.json()["error"]["code"] for r in responses if r.status_code >= 400)
        assert len(seen) >= 9 and sum(seen.values()) == len(responses) - 2
        samples = _samples(client.get("/metrics").text)
        counted = {k.split('code="')[1].rstrip('"}'): v for k, v in samples.items()
                   if k.startswith("instructedit_errors_total{")}
        assert counted == dict(seen)


def test_the_store_namespace_follows_combination_and_basis_not_the_editor(
        settings: ServiceSettings) -> None:
    """docs/store-and-replicas.md: keys live under a hash of the model's fingerprint, the
    combination and the edit basis; the editor is not part of it. A service started with
    another combination sees none of the edits; back on the first, it has them all."""
    settings.combination, settings.edit_basis = "sum", "current"
    with TestClient(create_app(settings)) as client:
        assert client.post("/edits", json=EDIT).status_code == 201
        live = client.app.state.live
        editor, fingerprint = live.editor, live.fingerprint
        key = store_key(fingerprint, editor)
    others = [settings.model_copy(update={"combination": "ridge"}),
              settings.model_copy(update={"edit_basis": "pristine"})]
    for other in others:
        with TestClient(create_app(other)) as client:
            info = client.get("/info").json()
            assert (info["edit_version"], info["active_edits"]) == (0, 0)
            assert client.get("/edits").json()["edits"] == []
    with TestClient(create_app(settings)) as client:
        assert client.get("/info").json()["active_edits"] == 1
    # the key itself: the combination and the basis change it (switching editors keeps
    # the edits: tests/test_no_editor.py)
    combination, basis = editor.combination, editor.basis
    try:
        editor.combination = CombinationConfig("ridge", 3.0)
        assert store_key(fingerprint, editor) != key
        editor.combination, editor.basis = combination, "pristine"
        assert store_key(fingerprint, editor) != key
    finally:
        editor.combination, editor.basis = combination, basis
    assert store_key(fingerprint, editor) == key
