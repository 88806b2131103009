"""The HTTP API in process (FastAPI's TestClient runs the lifespan) on a real Redis."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import ServiceSettings

PROMPT, TARGET, SUBJECT = "Plyndti Brynta is a citizen of", "Veiistan", "Plyndti Brynta"
EDIT = {"task": "counterfact", "prompt": PROMPT, "target": TARGET, "subject": SUBJECT}


@pytest.fixture()
def settings(redis_socket: str, tmp_path) -> ServiceSettings:
    return ServiceSettings(redis_url=f"unix://{redis_socket}", data_dir=tmp_path, threads=2)


def _answer(client: TestClient, prompt: str = PROMPT) -> dict:
    response = client.post("/generate", json={"prompt": prompt, "max_new_tokens": 6})
    assert response.status_code == 200, response.text
    return response.json()


def test_edit_generate_rollback_and_restart_over_http(settings: ServiceSettings) -> None:
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"status": "ready", "replayed": 0}
        before = _answer(client)
        assert not before["text"].strip().startswith(TARGET) and before["version"] == 0
        created = client.post("/edits", json=EDIT)
        assert created.status_code == 201, created.text
        edit = created.json()
        assert edit["version"] == 1 and edit["status"] == "active" and PROMPT in edit[
            "instruction"]
        after = _answer(client)
        assert after["text"].strip().startswith(TARGET) and after["version"] == 1
        assert client.get(f"/edits/{edit['id']}").json()["id"] == edit["id"]
        info = client.get("/info").json()
        assert info["active_edits"] == 1 and info["live_digest"] != info["pristine_digest"]
    # A restarted service replays the stored edit and answers the same.
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").json()["replayed"] == 1
        assert _answer(client)["text"].strip().startswith(TARGET)
        rolled = client.post(f"/edits/{edit['id']}/rollback")
        assert rolled.status_code == 200 and rolled.json()["status"] == "rolled_back"
        assert _answer(client)["text"] == before["text"]
        info = client.get("/info").json()
        assert info["live_digest"] == info["pristine_digest"] and info["active_edits"] == 0
        again = client.post(f"/edits/{edit['id']}/rollback")
        assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"


def test_idempotency_and_errors(settings: ServiceSettings) -> None:
    with TestClient(create_app(settings)) as client:
        first = client.post("/edits", json=EDIT, headers={"Idempotency-Key": "k"})
        second = client.post("/edits", json=EDIT, headers={"Idempotency-Key": "k"})
        assert first.status_code == second.status_code == 201
        assert first.json()["id"] == second.json()["id"]
        assert client.get("/info").json()["active_edits"] == 1
        unknown = client.get("/edits/nope")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
        for bad in ({**EDIT, "task": "poetry"}, {**EDIT, "prompt": ""}, {**EDIT, "target": 7},
                    {"prompt": PROMPT}):
            response = client.post("/edits", json=bad)
            assert response.status_code == 422, bad
            body = response.json()["error"]
            assert body["code"] == "invalid_request" and body["details"]["errors"]
        assert client.get("/info").json()["active_edits"] == 1  # nothing else was applied
