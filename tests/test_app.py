"""The HTTP API in process (FastAPI's TestClient runs the lifespan) on a real Redis."""

from __future__ import annotations

import contextvars
import json
import re

import pytest
from fastapi.testclient import TestClient
from redis.asyncio.connection import AbstractConnection

from service.app import create_app
from service.engine import EditEngine
from service.settings import ApiKey, ServiceSettings

PROMPT, TARGET, SUBJECT = "Plyndti Brynta is a citizen of", "Veiistan", "Plyndti Brynta"
REPHRASE = "What country is Plyndti Brynta a citizen of?"
UNRELATED = "The capital of Veiistan is"
EDIT = {"task": "counterfact", "prompt": PROMPT, "target": TARGET, "subject": SUBJECT}
READ_KEY, EDIT_KEY = "read-key-0123456789", "edit-key-0123456789"


@pytest.fixture()
def settings(redis_socket: str, tmp_path) -> ServiceSettings:
    return ServiceSettings(redis_url=f"unix://{redis_socket}", data_dir=tmp_path, threads=2)


@pytest.fixture()
def client(settings: ServiceSettings):
    with TestClient(create_app(settings)) as c:
        yield c


def answer(client: TestClient, prompt: str = PROMPT, **params) -> dict:
    response = client.post("/generate", json={"prompt": prompt, "max_new_tokens": 6,
                                              **params})
    assert response.status_code == 200, response.text
    return response.json()


def state(client: TestClient) -> tuple[int, int, str]:
    info = client.get("/info").json()
    return info["edit_version"], info["active_edits"], info["live_digest"]


def test_edit_generate_rollback_and_restart_over_http(settings: ServiceSettings) -> None:
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"status": "ready", "replayed": 0,
                                                 "version": 0}
        before, unrelated = answer(client), answer(client, UNRELATED)
        assert not before["text"].strip().startswith(TARGET) and before["version"] == 0
        created = client.post("/edits", json={**EDIT, "rephrases": [REPHRASE],
                                              "locality_prompts": [UNRELATED]})
        assert created.status_code == 201, created.text
        edit = created.json()
        assert edit["version"] == 1 and edit["status"] == "active"
        assert PROMPT in edit["instruction"] and edit["created_by"] == "anonymous"
        assert set(edit["timings_ms"]) == {"aliases", "compute", "judge", "measure", "persist",
                                          "apply"}
        assert edit["outcome"] in ("one_shot", "refined") and not edit["accept_partial"]
        assert (edit["refine_steps"] == 0) == (edit["outcome"] == "one_shot")
        quality = edit["quality"]
        assert quality["prompt"]["after"]["probability"] > 0.5 > quality["prompt"]["before"][
            "probability"]
        assert quality["rephrases"][0]["prompt"] == REPHRASE
        assert quality["rephrases"][0]["after"]["token_accuracy"] == 1.0
        assert quality["locality"][0]["unchanged"] and quality["locality_unchanged"]
        after = answer(client)
        assert after["text"].strip().startswith(TARGET) and after["version"] == 1
        assert after["edits_fired"] == [edit["id"]] and before["edits_fired"] == []
        assert answer(client, UNRELATED)["edits_fired"] == []
        assert answer(client, REPHRASE)["text"].strip().startswith(TARGET)  # held-out wording
        assert answer(client, UNRELATED)["text"] == unrelated["text"]
        assert client.get(f"/edits/{edit['id']}").json() == edit
        version, active, digest = state(client)
        info = client.get("/info").json()
        assert (version, active) == (1, 1) and digest != info["pristine_digest"]
        assert info["combination"] == {"kind": "memory", "lam": None}
        assert info["edit_basis"] == "pristine"
    # A restarted service replays the stored edit: same weights, same answers.
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").json()["replayed"] == 1
        assert state(client) == (version, active, digest)
        assert answer(client)["text"] == after["text"]
        rolled = client.post(f"/edits/{edit['id']}/rollback")
        assert rolled.status_code == 200, rolled.text
        body = rolled.json()
        assert body["status"] == "rolled_back" and body["rolled_back_by"] == "anonymous"
        assert body["rolled_back_version"] == 2 and body["rolled_back_at"]
        assert answer(client) == {**before, "version": 2}
        info = client.get("/info").json()
        assert info["live_digest"] == info["pristine_digest"] and info["active_edits"] == 0
        again = client.post(f"/edits/{edit['id']}/rollback")
        assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    with TestClient(create_app(settings)) as client:  # a restart after a rollback
        assert state(client)[:2] == (2, 0) and answer(client)["text"] == before["text"]


def test_idempotency_key_gives_one_edit(client: TestClient) -> None:
    first = client.post("/edits", json=EDIT, headers={"Idempotency-Key": "k"})
    second = client.post("/edits", json=EDIT, headers={"Idempotency-Key": "k"})
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json() and second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    other = client.post("/edits", json={**EDIT, "target": "Faemovia"},
                        headers={"Idempotency-Key": "k"})
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert state(client)[:2] == (1, 1)


def test_a_key_another_replica_stored_meanwhile_replays_its_edit(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    first = client.post("/edits", json=EDIT, headers={"Idempotency-Key": "race"})
    assert first.status_code == 201, first.text
    before = client.get("/info").json()
    store = client.app.state.live.store

    read_log = store.read_log

    async def not_yet_seen(after: str, idempotency_key: str | None = None):
        return await read_log(after)  # the key was stored after this replica looked
    monkeypatch.setattr(store, "read_log", not_yet_seen)
    again = client.post("/edits", json=EDIT, headers={"Idempotency-Key": "race"})
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    other = client.post("/edits", json={**EDIT, "target": "Faemovia"},
                        headers={"Idempotency-Key": "race"})
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    after = client.get("/info").json()
    assert (after["edit_version"], after["active_edits"], after["live_digest"]) == (
        before["edit_version"], before["active_edits"], before["live_digest"])


_SENT: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("sent", default=None)


def count_round_trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What each ``EditEngine.create`` sends Redis, one entry per round trip (a command, a
    script call or a whole pipeline: one write to the socket, one wait for its replies),
    naming the commands sent together. The real server answers; this only counts. Only the
    create's own task (and tasks it starts) is counted, not the background log follower."""
    sent: list[str] = []
    send, create = AbstractConnection.send_packed_command, EditEngine.create

    async def counted_send(self, command, check_health=True):
        if (into := _SENT.get()) is not None:
            data = b"".join([command] if isinstance(command, bytes) else command)
            into.append(" ".join(n.decode().upper() for n in re.findall(
                rb"\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n", data)))
        return await send(self, command, check_health)

    async def counted_create(self, *args, **kwargs):
        token = _SENT.set(sent)
        try:
            return await create(self, *args, **kwargs)
        finally:
            _SENT.reset(token)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted_send)
    monkeypatch.setattr(EditEngine, "create", counted_create)
    return sent


def test_a_one_shot_edit_makes_at_most_three_store_round_trips(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    warm = client.post("/edits", json={**EDIT, "prompt": "Plyndti Brynta was born in"})
    assert warm.status_code == 201, warm.text  # the scripts are loaded once per server
    sent = count_round_trips(monkeypatch)
    for i, headers in enumerate(({}, {"Idempotency-Key": "counted"})):
        sent.clear()
        created = client.post("/edits", json={**EDIT, "target": ["Veiistan", "Faemovia"][i]},
                              headers=headers)
        assert created.status_code == 201, created.text
        assert created.json()["outcome"] == "one_shot"
        assert len(sent) <= 3, (headers, sent)
    sent.clear()
    replayed = client.post("/edits", json={**EDIT, "target": "Faemovia"},
                           headers={"Idempotency-Key": "counted"})
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.json() == created.json() and len(sent) <= 2, sent


def test_batch_is_one_pass_stored_per_edit_and_all_or_nothing(client: TestClient) -> None:
    second = {"task": "recent", "prompt": "Krelbo Vusk is a citizen of", "target": "Faemovia",
              "subject": "Krelbo Vusk"}
    created = client.post("/edits/batch", json={"edits": [EDIT, second]})
    assert created.status_code == 201, created.text
    edits = created.json()["edits"]
    assert [e["version"] for e in edits] == [1, 2]
    assert [e["batch_size"] for e in edits] == [2, 2]
    assert answer(client)["text"].strip().startswith(TARGET)
    assert answer(client, second["prompt"])["text"].strip().startswith("Faemovia")
    client.post(f"/edits/{edits[0]['id']}/rollback")  # each edit rolls back on its own
    assert not answer(client)["text"].strip().startswith(TARGET)
    assert answer(client, second["prompt"])["text"].strip().startswith("Faemovia")
    kept = state(client)
    bad = client.post("/edits/batch", json={"edits": [EDIT, {**second, "task": "poetry"}]})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "unknown_task"
    assert bad.json()["error"]["details"]["known"] == ["counterfact", "recent", "convsent",
                                                       "zsre"]
    convsent = client.post("/edits/batch", json={"edits": [EDIT, {**second,
                                                                  "task": "convsent"}]})
    assert convsent.status_code == 422 and convsent.json()["error"]["code"] == "invalid_edit"
    assert state(client) == kept
    assert len(client.get("/edits").json()["edits"]) == 2  # nothing of the failures stored


def test_listing_filters_and_rollback_to_version(client: TestClient) -> None:
    bodies = [EDIT,
              {"task": "recent", "prompt": "Dreixfur Zindplexgirk is a citizen of",
               "target": "Faemovia", "subject": "Dreixfur Zindplexgirk"},
              {"task": "counterfact", "prompt": "Treilbram Vrounbyx is a citizen of",
               "target": "Foxistan", "subject": "Treilbram Vrounbyx"},
              {"task": "recent", "prompt": "Plyndti Brynta was born in", "target": "Krexstan",
               "subject": SUBJECT}]
    ids = [client.post("/edits", json=body).json()["id"] for body in bodies]
    page = client.get("/edits", params={"limit": 3}).json()
    assert [e["id"] for e in page["edits"]] == ids[:0:-1] and page["next_cursor"] == 2
    rest = client.get("/edits", params={"limit": 3, "before": page["next_cursor"]}).json()
    assert [e["id"] for e in rest["edits"]] == [ids[0]] and rest["next_cursor"] is None
    recent = client.get("/edits", params={"task": "recent"}).json()["edits"]
    assert [e["id"] for e in recent] == [ids[3], ids[1]]
    by_subject = client.get("/edits", params={"subject": SUBJECT}).json()["edits"]
    assert [e["id"] for e in by_subject] == [ids[3], ids[0]]
    assert client.get("/edits", params={"subject": "nobody"}).json()["edits"] == []
    misspelt = client.get("/edits", params={"cursor": "zzz", "limit": 3})
    assert misspelt.status_code == 422 and misspelt.json()["error"]["code"] == "invalid_request"
    assert [e["loc"] for e in misspelt.json()["error"]["details"]["errors"]] == [
        ["query", "cursor"]]
    back = client.post("/edits/rollback", json={"to_version": 2})
    assert back.status_code == 200, back.text
    assert [e["id"] for e in back.json()["rolled_back"]] == [ids[3], ids[2]]
    assert back.json()["version"] == 5 and answer(client)["text"].strip().startswith(TARGET)
    rolled = client.get("/edits", params={"status": "rolled_back"}).json()["edits"]
    assert [e["id"] for e in rolled] == [ids[3], ids[2]]
    again = client.post("/edits/rollback", json={"to_version": 2}).json()
    assert again == {"rolled_back": [], "version": 5}


def test_editing_the_same_fact_again_supersedes_the_older_edit(client: TestClient) -> None:
    fact = {**EDIT, "relation": "citizenship"}
    pristine = answer(client)["text"]
    made = []
    for target in ("Veiistan", "Krexstan", "Foxistan"):
        made.append(client.post("/edits", json={**fact, "target": target}).json())
    assert [e["superseded"] for e in made] == [[], [made[0]["id"]], [made[1]["id"]]]
    assert all(e["relation"] == "citizenship" for e in made)
    active = client.get("/edits", params={"status": "active"}).json()["edits"]
    assert [e["id"] for e in active] == [made[2]["id"]]  # one active edit: the latest
    old = client.get(f"/edits/{made[0]['id']}").json()
    assert old["status"] == "rolled_back" and old["superseded_by"] == made[1]["id"]
    assert old["rolled_back_version"] == made[1]["version"]  # the same step
    assert answer(client)["text"].strip().startswith("Foxistan")
    assert state(client)[:2] == (3, 1)
    # The same prompt, even without subject and relation, is the same fact. Asked, the
    # record says how the new edit moved earlier edits' targets.
    other = client.post("/edits", json={"task": "counterfact", "target": "Krexstan",
                                        "prompt": "Treilbram Vrounbyx is a citizen of"}).json()
    again = client.post("/edits", json={"task": "counterfact", "prompt": PROMPT,
                                        "target": "Veiistan", "check_earlier": 2}).json()
    assert again["superseded"] == [made[2]["id"]]
    earlier = again["quality"]["earlier_edits"]
    assert [e["id"] for e in earlier] == [other["id"], made[2]["id"]]
    assert earlier[0]["before"]["token_accuracy"] == 1.0  # the other edit held before...
    assert earlier[1]["after"]["probability"] < earlier[1]["before"]["probability"]
    # Several facts about one subject in a batch all stay; the same fact twice is refused.
    batch = client.post("/edits/batch", json={"edits": [
        {**fact, "prompt": "Plyndti Brynta was born in", "relation": "birthplace",
         "target": "Krexstan"},
        {**fact, "prompt": "Plyndti Brynta works for", "relation": "employer",
         "target": "Boldrom Partners"}]})
    assert batch.status_code == 201 and all(e["superseded"] == []
                                            for e in batch.json()["edits"])
    twice = client.post("/edits/batch", json={"edits": [fact, {**fact, "target": "Krexstan"}]})
    assert twice.status_code == 422 and twice.json()["error"]["code"] == "conflicting_batch"
    # Rolling back the newest edit of a fact does not bring an older one back.
    client.post(f"/edits/{again['id']}/rollback")
    assert answer(client)["text"] == pristine


def test_generation_sampling_streaming_and_score(client: TestClient) -> None:
    sampled = [answer(client, temperature=1.0, top_p=0.9, top_k=40, seed=7,
                      max_new_tokens=12) for _ in range(2)]
    assert sampled[0] == sampled[1]  # a seed makes sampling repeatable
    greedy = answer(client, max_new_tokens=12)
    assert greedy["usage"]["completion_tokens"] == 12 and greedy["finish_reason"] == "length"
    stopped = answer(client, max_new_tokens=12, stop=["\n"])
    assert stopped["finish_reason"] == "stop" and "\n" not in stopped["text"]
    assert greedy["text"].startswith(stopped["text"])
    with client.stream("POST", "/generate", json={"prompt": PROMPT, "max_new_tokens": 12,
                                                  "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _sse(response.read().decode())
    tokens = [json.loads(data)["text"] for event, data in events if event == "token"]
    assert len(tokens) > 1 and "".join(tokens) == greedy["text"]
    assert events[-1][0] == "done" and json.loads(events[-1][1]) == greedy
    scored = client.post("/score", json={"prompt": PROMPT, "targets": [TARGET, "Faemovia"]})
    assert scored.status_code == 200, scored.text
    scores = scored.json()["scores"]
    assert [s["target"] for s in scores] == [TARGET, "Faemovia"]
    assert all(s["probability"] == pytest.approx(2.718281828 ** s["logprob"]) for s in scores)
    client.post("/edits", json=EDIT)
    after = client.post("/score", json={"prompt": PROMPT, "targets": [TARGET]}).json()
    assert after["version"] == 1 and after["scores"][0]["token_accuracy"] == 1.0
    assert after["scores"][0]["logprob"] > scores[0]["logprob"]


def _sse(text: str) -> list[tuple[str, str]]:
    events = []
    for block in text.replace("\r\n", "\n").strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((fields.get("event"), fields.get("data")))
    return events


@pytest.mark.parametrize("body, status, code", [
    ({**EDIT, "prompt": ""}, 422, "invalid_request"),
    ({**EDIT, "target": ""}, 422, "invalid_request"),
    ({**EDIT, "prompt": "word " * 300}, 422, "prompt_too_long"),
    ({**EDIT, "target": "word " * 100}, 422, "target_too_long"),
    ({**EDIT, "rephrases": ["word " * 300]}, 422, "prompt_too_long"),
    ({**EDIT, "task": "poetry"}, 422, "unknown_task"),
    ({**EDIT, "target": 7}, 422, "invalid_request"),
    ({**EDIT, "rephrases": "not a list"}, 422, "invalid_request"),
    ({**EDIT, "colour": "blue"}, 422, "invalid_request"),
    ({"prompt": PROMPT}, 422, "invalid_request"),
    ({**EDIT, "target": "   "}, 422, "invalid_edit"),
    ({**EDIT, "task": "convsent"}, 422, "invalid_edit"),  # no sentiment given
])
def test_bad_edits_get_their_4xx_and_change_nothing(client: TestClient, body, status, code):
    before = state(client)
    response = client.post("/edits", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert state(client) == before and client.get("/edits").json()["edits"] == []


def test_malformed_and_oversized_bodies(settings: ServiceSettings) -> None:
    settings.limits.max_body_bytes = 4096
    settings.limits.max_batch_edits = 2
    with TestClient(create_app(settings)) as client:
        headers = {"content-type": "application/json"}
        bad_utf8 = client.post("/edits", content=b'{"task": "\xff\xfe"}', headers=headers)
        assert bad_utf8.status_code == 400
        assert bad_utf8.json()["error"]["code"] in ("malformed_body", "malformed_json")
        not_json = client.post("/edits", content=b'{"task": ', headers=headers)
        assert not_json.status_code == 400 and not_json.json()["error"]["code"] == (
            "malformed_json")
        huge = client.post("/edits", content=b"x" * 5000, headers=headers)
        assert huge.status_code == 413 and huge.json()["error"]["code"] == "body_too_large"

        def chunks():
            for _ in range(10):
                yield b"x" * 1000
        chunked = client.post("/edits", content=chunks(), headers=headers)
        assert chunked.status_code == 413
        batch = client.post("/edits/batch", json={"edits": [EDIT] * 3})
        assert batch.status_code == 413 and batch.json()["error"]["code"] == "batch_too_large"
        assert client.post("/edits/batch", json={"edits": []}).status_code == 422
        long = client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 10_000})
        assert long.status_code == 422 and long.json()["error"]["code"] == "too_many_tokens"
        for body in ({"prompt": PROMPT, "temperature": -1}, {"prompt": PROMPT, "top_p": 0},
                     {"prompt": ""}, {"prompt": PROMPT, "stop": "x"}):
            assert client.post("/generate", json=body).status_code == 422, body
        assert client.post("/score", json={"prompt": PROMPT, "targets": []}).status_code == 422
        blank = client.post("/score", json={"prompt": PROMPT, "targets": [" "]})
        assert blank.status_code == 422 and blank.json()["error"]["code"] == "invalid_target"
        assert client.get("/edits/nope").json()["error"]["code"] == "not_found"
        assert client.post("/edits/nope/rollback").status_code == 404
        assert client.get("/edits", params={"limit": 0}).status_code == 422
        assert client.post("/edits/rollback", json={"to_version": -1}).status_code == 422
        assert state(client)[:2] == (0, 0)


def test_api_key_scopes(settings: ServiceSettings) -> None:
    settings.api_keys = [ApiKey(name="reader", key=READ_KEY, scope="read"),
                         ApiKey(name="editor", key=EDIT_KEY, scope="edit")]
    read, edit = ({"Authorization": f"Bearer {k}"} for k in (READ_KEY, EDIT_KEY))
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200  # probes stay open
        assert client.get("/metrics").status_code == 200
        missing = client.post("/generate", json={"prompt": PROMPT})
        assert missing.status_code == 401 and missing.json()["error"]["code"] == (
            "unauthenticated")
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        wrong = client.get("/info", headers={"Authorization": "Bearer not-a-key"})
        assert wrong.status_code == 401
        assert client.get("/info", headers={"Authorization": READ_KEY}).status_code == 401
        for path in ("/info", "/tasks", "/edits"):
            assert client.get(path, headers=read).status_code == 200, path
        assert client.post("/generate", json={"prompt": PROMPT}, headers=read).status_code == 200
        refused = client.post("/edits", json=EDIT, headers=read)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
        assert client.post("/edits/rollback", json={"to_version": 0},
                           headers=read).status_code == 403
        made = client.post("/edits", json=EDIT, headers=edit)
        assert made.status_code == 201 and made.json()["created_by"] == "editor"
        assert client.post(f"/edits/{made.json()['id']}/rollback",
                           headers=read).status_code == 403
        done = client.post(f"/edits/{made.json()['id']}/rollback", headers=edit).json()
        assert done["rolled_back_by"] == "editor"
        assert client.get("/info", headers=edit).status_code == 200  # edit includes read


def test_metrics_request_ids_and_busy(settings: ServiceSettings) -> None:
    settings.limits.max_queued_edits = 0
    with TestClient(create_app(settings)) as client:
        busy = client.post("/edits", json=EDIT)
        assert busy.status_code == 429 and busy.json()["error"]["code"] == "busy"
        assert busy.headers["Retry-After"] == "1"
    settings.limits.max_queued_edits = 16
    with TestClient(create_app(settings)) as client:
        given = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
        assert given.headers["X-Request-ID"] == "abc-123"
        fresh = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
        assert fresh.headers["X-Request-ID"] not in ("", "bad id\twith spaces")
        client.post("/edits", json=EDIT)
        client.post("/edits", json={**EDIT, "task": "poetry"})
        answer(client)
        text = client.get("/metrics").text
    samples = _samples(text)
    assert samples['instructedit_edits_total{outcome="applied",task="counterfact"}'] == 1
    assert samples['instructedit_errors_total{code="unknown_task"}'] == 1
    assert samples["instructedit_edit_version"] == 1
    assert samples["instructedit_active_edits"] == 1
    assert samples['instructedit_edit_duration_seconds_count{phase="compute"}'] == 1
    assert samples["instructedit_generated_tokens_total"] == 6
    assert samples["instructedit_post_edit_target_probability_count{task=\"counterfact\"}"] == 1
    assert samples["instructedit_edit_lock_wait_seconds_count"] == 1
    assert any(k.startswith("instructedit_http_requests_total") for k in samples)
    # the applied edit's persist phase (the refused one never got there), in cumulative
    # buckets that end at the count
    persist = [v for k, v in samples.items()
               if k.startswith("instructedit_edit_duration_seconds_bucket{")
               and 'phase="persist"' in k]
    assert len(persist) == 16 and persist == sorted(persist)
    assert persist[-1] == samples['instructedit_edit_duration_seconds_count{phase="persist"}']
    assert persist[-1] == 1


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.mark.parametrize("combination, basis, expected", [
    ("sum", "auto", ({"kind": "sum", "lam": None}, "current")),
    ("ridge", "current", ({"kind": "ridge", "lam": 3.0}, "current")),
    ("editor", "auto", ({"kind": "sum", "lam": None}, "current")),  # as the demo editor
])
def test_the_combination_and_basis_settings(settings: ServiceSettings, combination: str,
                                            basis: str, expected) -> None:
    settings.combination, settings.edit_basis = combination, basis
    with TestClient(create_app(settings)) as client:
        info = client.get("/info").json()
        assert (info["combination"], info["edit_basis"]) == expected
        made = client.post("/edits", json=EDIT)
        assert made.status_code == 201 and answer(client)["text"].strip().startswith(TARGET)


def test_a_completions_requests_prompts_are_decoded_together(
        settings: ServiceSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    import service.batcher

    waves: list[int] = []
    decode = service.batcher.generate_together

    def counted(model, streams, *args, **kwargs):
        waves.append(len(streams))
        return decode(model, streams, *args, **kwargs)

    monkeypatch.setattr(service.batcher, "generate_together", counted)
    wide = settings.model_copy(update={"generation_batch_window_ms": 500.0})
    with TestClient(create_app(wide)) as client:
        waves.clear()  # the warm-up
        prompts = [PROMPT, UNRELATED, REPHRASE]
        reply = client.post("/v1/completions", json={"model": "demo-lm", "prompt": prompts,
                                                     "max_tokens": 4, "temperature": 0})
        assert reply.status_code == 200, reply.text
        assert [c["index"] for c in reply.json()["choices"]] == [0, 1, 2]
        assert waves == [3]
        alone = [client.post("/generate", json={"prompt": p, "max_new_tokens": 4}).json()
                 for p in prompts]
        assert [c["text"] for c in reply.json()["choices"]] == [a["text"] for a in alone]
