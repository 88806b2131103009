"""Acceptance: a real ``instructedit serve`` process (uvicorn) with its embedded Redis."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from editor_lab.training.examples import load_task_records

from .server_process import ServiceProcess

HANG_GUARD_S = 120.0  # how long a wait may take before it is called a hang

PROMPT, TARGET, SUBJECT = "Plyndti Brynta is a citizen of", "Veiistan", "Plyndti Brynta"
REPHRASE = "What country is Plyndti Brynta a citizen of?"
UNRELATED = ["The capital of Veiistan is", "Hello"]
EDIT = {"task": "counterfact", "prompt": PROMPT, "target": TARGET, "subject": SUBJECT}


def generate(client: httpx.Client, prompt: str, n: int = 6) -> dict:
    response = client.post("/generate", json={"prompt": prompt, "max_new_tokens": n})
    assert response.status_code == 200, response.text
    return response.json()


def test_edit_restart_and_rollback_to_pristine(tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path / "data").start()
    try:
        with service.client() as c:
            before = {p: generate(c, p)["text"] for p in [PROMPT, REPHRASE, *UNRELATED]}
            made = c.post("/edits", json=EDIT, headers={"X-Request-ID": "edit-1"})
            assert made.status_code == 201 and made.headers["X-Request-ID"] == "edit-1"
            assert generate(c, PROMPT)["text"].strip().startswith(TARGET)
            assert generate(c, REPHRASE)["text"].strip().startswith(TARGET)
            assert all(generate(c, p)["text"] == before[p] for p in UNRELATED)
            info = c.get("/info").json()
            answers = {p: generate(c, p)["text"] for p in before}
        service.stop()
        # JSON logs, each with a request id; the edit's access log line carries its id.
        lines = [json.loads(line) for line in service.logs().splitlines()
                 if line.startswith("{")]
        assert lines and all("request_id" in line for line in lines)
        assert any(line["request_id"] == "edit-1" for line in lines)

        service.start()
        with service.client() as c:
            again = c.get("/info").json()
            assert (again["live_digest"], again["active_edits"], again["edit_version"]) == (
                info["live_digest"], 1, 1)
            assert {p: generate(c, p)["text"] for p in before} == answers
            c.post(f"/edits/{made.json()['id']}/rollback").raise_for_status()
            assert {p: generate(c, p)["text"] for p in before} == before
            final = c.get("/info").json()
            assert final["live_digest"] == final["pristine_digest"]
    finally:
        service.stop()


def test_kill_9_while_editing_loses_no_acknowledged_edit(tmp_path: Path,
                                                         exported: Path) -> None:
    service = ServiceProcess(tmp_path / "data").start()
    acknowledged: list[str] = []
    records = load_task_records(exported, ["counterfact"], "test")["counterfact"][:40]
    targets = [{"task": "counterfact", "prompt": r.prompt, "target": r.target_new,
                "subject": r.subject} for r in records]  # forty different facts

    four = threading.Event()

    def post_edits() -> None:
        with service.client() as c:
            for body in targets:
                try:
                    r = c.post("/edits", json=body)
                except httpx.TransportError:
                    return  # the service died mid-request: not acknowledged
                assert r.status_code == 201, r.text
                acknowledged.append(r.json()["id"])
                if len(acknowledged) == 4:
                    four.set()

    pool = ThreadPoolExecutor(2)  # the poster, and a wait for its fourth edit
    try:
        poster = pool.submit(post_edits)  # .result() raises what failed in the thread
        # the fourth acknowledgement (or the poster ending early, which .result() explains)
        wait([poster, pool.submit(four.wait, HANG_GUARD_S)], return_when=FIRST_COMPLETED)
        assert four.is_set(), poster.result() if poster.done() else "no fourth edit: a hang"
        assert not poster.done(), "the edits finished before the kill"
        service.kill()
        poster.result(timeout=HANG_GUARD_S)
        assert len(acknowledged) < len(targets)
        service.start()
        with service.client() as c:
            stored = c.get("/edits", params={"limit": 200}).json()["edits"]
            info = c.get("/info").json()
            replayed = c.get("/readyz").json()["replayed"]
            stored_ids = [e["id"] for e in stored]
            # Every acknowledged edit is there and active; at most the one in flight more.
            assert set(acknowledged) <= set(stored_ids)
            assert len(stored_ids) - len(acknowledged) in (0, 1)
            assert all(e["status"] == "active" for e in stored)
            assert replayed == info["active_edits"] == len(stored)
            assert info["edit_version"] == max(e["version"] for e in stored)
            # Nothing half there: the weights are exactly the stored edits' sum, so taking
            # every one of them back gives the pristine weights.
            c.post("/edits/rollback", json={"to_version": 0}).raise_for_status()
            final = c.get("/info").json()
            assert final["live_digest"] == final["pristine_digest"]
    finally:
        pool.shutdown(wait=False)
        service.stop()


def test_generations_during_edits_match_their_reported_version(tmp_path: Path,
                                                                exported: Path) -> None:
    records = load_task_records(exported, ["counterfact"], "test")["counterfact"][:20]
    prompts = [r.prompt for r in records[:6]] + UNRELATED
    service = ServiceProcess(tmp_path / "data").start()
    seen: dict[tuple[str, int], set[str]] = defaultdict(set)
    failures: list[str] = []
    health: list[int] = []
    probed = threading.Condition()
    done = threading.Event()

    def probe_health() -> None:
        with service.client() as c:
            while not done.is_set():
                status = c.get("/healthz").status_code
                with probed:
                    health.append(status)
                    probed.notify_all()

    def answered_again() -> None:
        """Wait for the health probe to answer once more (a hang guard only)."""
        with probed:
            n = len(health)
            assert probed.wait_for(lambda: len(health) > n, HANG_GUARD_S), "a hang"

    def client_loop(offset: int) -> None:
        with service.client() as c:
            i = offset
            while not done.is_set():
                prompt = prompts[i % len(prompts)]
                r = c.post("/generate", json={"prompt": prompt, "max_new_tokens": 5})
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    seen[(prompt, r.json()["version"])].add(r.json()["text"])
                i += 1

    pool = ThreadPoolExecutor(9)
    try:
        clients = [pool.submit(client_loop, k) for k in range(8)]
        clients.append(pool.submit(probe_health))
        with service.client() as c:
            for r in records:
                made = c.post("/edits", json={"task": "counterfact", "prompt": r.prompt,
                                              "target": r.target_new, "subject": r.subject})
                assert made.status_code == 201, made.text
                answered_again()  # healthy between every two edits
            assert c.get("/healthz").status_code == 200
        done.set()
        for t in clients:
            t.result(timeout=HANG_GUARD_S)  # raises what failed in a client thread
        assert not failures, failures[:3]
        assert len(health) >= 20 and set(health) == {200}  # alive while edits ran
        versions = {v for _, v in seen}
        assert len(versions) > 5  # the clients really ran across the edits
        # Every answer is the one its version gives: rebuild each version's weights by
        # rolling back to it, newest first, and ask again.
        with service.client() as c:
            for version in sorted(versions, reverse=True):
                c.post("/edits/rollback", json={"to_version": version}).raise_for_status()
                for prompt in prompts:
                    if (prompt, version) in seen:
                        expected = generate(c, prompt, 5)["text"]
                        assert seen[(prompt, version)] == {expected}, (prompt, version)
    finally:
        done.set()
        pool.shutdown(wait=False)
        service.stop()


def test_idempotency_rollback_auth_and_bad_inputs_over_http(tmp_path: Path) -> None:
    read_key, edit_key = "read-key-0123456789", "edit-key-0123456789"
    keys = [{"name": "reader", "key": read_key, "scope": "read"},
            {"name": "editor", "key": edit_key, "scope": "edit"}]
    service = ServiceProcess(tmp_path / "data", env={
        "INSTRUCTEDIT_API_KEYS": json.dumps(keys),
        "INSTRUCTEDIT_LIMITS__MAX_BATCH_EDITS": "4"}).start()
    read = {"Authorization": f"Bearer {read_key}"}
    edit = {"Authorization": f"Bearer {edit_key}"}
    try:
        with service.client() as c:
            assert c.post("/edits", json=EDIT).status_code == 401
            assert c.post("/edits", json=EDIT, headers=read).status_code == 403
            assert c.post("/generate", json={"prompt": PROMPT}, headers=read).status_code == 200
            first = c.post("/edits", json=EDIT, headers={**edit, "Idempotency-Key": "once"})
            second = c.post("/edits", json=EDIT, headers={**edit, "Idempotency-Key": "once"})
            assert first.status_code == second.status_code == 201
            assert first.json()["id"] == second.json()["id"]
            assert c.get("/info", headers=read).json()["active_edits"] == 1
            edit_id = first.json()["id"]
            assert c.post(f"/edits/{edit_id}/rollback", headers=edit).status_code == 200
            twice = c.post(f"/edits/{edit_id}/rollback", headers=edit)
            assert twice.status_code == 409 and twice.json()["error"]["code"] == "conflict"
            before = c.get("/info", headers=read).json()
            raw = {**edit, "Content-Type": "application/json"}
            refused = {
                "empty prompt": (c.post("/edits", json={**EDIT, "prompt": ""}, headers=edit),
                                 422),
                "empty target": (c.post("/edits", json={**EDIT, "target": ""}, headers=edit),
                                 422),
                "overlong prompt": (c.post("/edits", json={**EDIT, "prompt": "word " * 300},
                                           headers=edit), 422),
                "overlong target": (c.post("/edits", json={**EDIT, "target": "word " * 100},
                                           headers=edit), 422),
                "unknown task": (c.post("/edits", json={**EDIT, "task": "poetry"},
                                        headers=edit), 422),
                "wrong type": (c.post("/edits", json={**EDIT, "target": ["x"]}, headers=edit),
                               422),
                "invalid UTF-8": (c.post("/edits", content=b'{"prompt": "\xff"}',
                                         headers=raw), 400),
                "huge batch": (c.post("/edits/batch", json={"edits": [EDIT] * 5},
                                      headers=edit), 413),
                "huge body": (c.post("/edits", content=b" " * 2_000_000, headers=raw), 413),
            }
            for what, (response, status) in refused.items():
                assert response.status_code == status, (what, response.text)
                assert response.json()["error"]["code"], what
            after = c.get("/info", headers=read).json()
            assert (after["edit_version"], after["live_digest"]) == (
                before["edit_version"], before["live_digest"])
            c.get("/info", headers={"Authorization": "Bearer not-a-key-0123456789"})
    finally:
        service.stop()
    # the keys, right or wrong, are never logged (the requests that carried them are)
    logs = service.logs()
    assert "/info" in logs and "/edits" in logs
    for secret in (read_key, edit_key, "not-a-key-0123456789"):
        assert secret not in logs


def _cases() -> list:
    """Every operation of the API (read from its schema, no service needed) with valid
    inputs, and with invalid ones where it takes any."""
    from service.app import create_app

    cases = []
    for path, methods in create_app().openapi()["paths"].items():
        for method, spec in methods.items():
            label = f"{method.upper()} {path}"
            cases.append(pytest.param(label, schemathesis.GenerationMode.POSITIVE,
                                      id=f"valid {label}"))
            if spec.get("parameters") or spec.get("requestBody"):
                cases.append(pytest.param(label, schemathesis.GenerationMode.NEGATIVE,
                                          id=f"invalid {label}"))
    return cases


@pytest.fixture(scope="module")
def live_schema(tmp_path_factory: pytest.TempPathFactory):
    service = ServiceProcess(tmp_path_factory.mktemp("schema") / "data").start()
    try:
        schema = schemathesis.openapi.from_url(f"{service.base}/openapi.json")
        yield {op.ok().label: op.ok() for op in schema.get_all_operations()}, service.base
    finally:
        service.stop()


@pytest.mark.parametrize("label, mode", _cases())
def test_no_generated_request_gets_a_server_error(live_schema, label: str, mode) -> None:
    """Schemathesis generates requests from the OpenAPI schema, valid and invalid ones:
    none may get a 5xx."""
    operations, base = live_schema

    @given(case=operations[label].as_strategy(generation_mode=mode))
    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        response = case.call(base_url=base, timeout=120)
        assert response.status_code < 500, (case.method, case.path, case.body,
                                            response.text[:500])
        if response.status_code >= 400:  # every error has the documented body
            assert set(response.json()["error"]) == {"code", "message", "details"}

    check()
