"""Edits that take or are refused (over HTTP, demo LM and editor, real Redis): an edit whose
greedy answer is not its target is refined, or refused with nothing changed, or kept only
when the request accepts a partial edit."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from editor_core.refine import RefineConfig
from service.app import create_app
from service.settings import ServiceSettings

# A name the demo LM never read, as the target of a relation it knows.
UNFAMILIAR = {"task": "recent", "prompt": "The capital of Qwertania is", "target": "Blorvik",
              "subject": "Qwertania"}
KNOWN = {"task": "counterfact", "prompt": "Plyndti Brynta is a citizen of",
         "target": "Veiistan", "subject": "Plyndti Brynta"}


def _settings(redis_socket: str, tmp_path, **extra) -> ServiceSettings:
    return ServiceSettings(redis_url=f"unix://{redis_socket}", data_dir=tmp_path, threads=2,
                           **extra)


def greedy(client: TestClient, prompt: str) -> str:
    response = client.post("/generate", json={"prompt": prompt, "max_new_tokens": 8,
                                              "stop": ["\n"]})
    assert response.status_code == 200, response.text
    return response.json()["text"].strip()


def snapshot(client: TestClient) -> tuple:
    info = client.get("/info").json()
    listed = client.get("/edits").json()["edits"]
    return info["edit_version"], info["active_edits"], info["live_digest"], len(listed)


def test_an_edit_the_one_shot_delta_misses_is_refined_until_it_holds(redis_socket, tmp_path
                                                                    ) -> None:
    with TestClient(create_app(_settings(redis_socket, tmp_path))) as client:
        assert not greedy(client, UNFAMILIAR["prompt"]).startswith("Blorvik")
        created = client.post("/edits", json=UNFAMILIAR)
        assert created.status_code == 201, created.text
        edit = created.json()
        assert edit["outcome"] == "refined" and edit["refine_steps"] > 0
        assert edit["refine_ms"] > 0 and "judge" in edit["timings_ms"]
        assert greedy(client, UNFAMILIAR["prompt"]).startswith("Blorvik")
        after = edit["quality"]["prompt"]["after"]
        assert after["token_accuracy"] == 1.0
        scored = client.post("/score", json={"prompt": UNFAMILIAR["prompt"],
                                             "targets": ["Blorvik"]}).json()["scores"][0]
        assert scored["logprob"] == pytest.approx(after["logprob"], rel=1e-4, abs=1e-4)
        metrics = client.get("/metrics").text
        assert 'instructedit_edit_outcomes_total{outcome="refined",task="recent"} 1.0' in metrics


def test_an_edit_that_does_not_hold_is_refused_and_changes_nothing(redis_socket, tmp_path
                                                                  ) -> None:
    settings = _settings(redis_socket, tmp_path, refine={"max_steps": 0})  # judge, never refine
    with TestClient(create_app(settings)) as client:
        kept = client.post("/edits", json=KNOWN)
        assert kept.status_code == 201 and kept.json()["outcome"] == "one_shot"
        before = snapshot(client)
        answer = greedy(client, UNFAMILIAR["prompt"])
        refused = client.post("/edits", json={**UNFAMILIAR, "rephrases": [
            "What is the capital of Qwertania?"]})
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["code"] == "edit_did_not_hold" and "accept_partial" in error["message"]
        [details] = error["details"]["edits"]
        assert details["index"] == 0 and details["target"] == "Blorvik"
        assert [p["prompt"] for p in details["prompts"]] == [
            UNFAMILIAR["prompt"], "What is the capital of Qwertania?"]
        assert details["prompts"][0]["after"]["token_accuracy"] < 1.0
        assert snapshot(client) == before  # weights, memory and store as they were
        assert greedy(client, UNFAMILIAR["prompt"]) == answer
        metrics = client.get("/metrics").text
        assert 'instructedit_edit_outcomes_total{outcome="refused",task="recent"} 1.0' in metrics


def test_a_batch_with_an_edit_that_does_not_hold_stores_none(redis_socket, tmp_path) -> None:
    settings = _settings(redis_socket, tmp_path, refine={"max_steps": 0})
    with TestClient(create_app(settings)) as client:
        before = snapshot(client)
        refused = client.post("/edits/batch", json={"edits": [KNOWN, UNFAMILIAR]})
        assert refused.status_code == 422, refused.text
        assert [e["index"] for e in refused.json()["error"]["details"]["edits"]] == [1]
        assert snapshot(client) == before


def test_accept_partial_keeps_the_edit_marked_as_such(redis_socket, tmp_path) -> None:
    settings = _settings(redis_socket, tmp_path, refine={"max_steps": 0})
    with TestClient(create_app(settings)) as client:
        created = client.post("/edits", json={**UNFAMILIAR, "accept_partial": True})
        assert created.status_code == 201, created.text
        edit = created.json()
        assert edit["outcome"] == "did_not_hold" and edit["accept_partial"]
        assert edit["refine_steps"] == 0
        assert client.get(f"/edits/{edit['id']}").json()["outcome"] == "did_not_hold"


@pytest.mark.parametrize("steps", [-1])
def test_refinement_settings_are_validated(steps: int) -> None:
    with pytest.raises(ValueError):
        ServiceSettings(refine={"max_steps": steps})


def test_refinement_is_one_nested_setting_read_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("INSTRUCTEDIT_REFINE__MAX_STEPS", "0")
    monkeypatch.setenv("INSTRUCTEDIT_REFINE__SCALES", "[2, 3]")
    assert ServiceSettings().refine == RefineConfig(max_steps=0, scales=(2.0, 3.0))
    monkeypatch.setenv("INSTRUCTEDIT_REFINE__CONFIDENCE", "1")
    with pytest.raises(ValueError, match="confidence"):
        ServiceSettings()


def test_an_edit_naming_a_known_relation_holds_in_its_other_wordings_and_by_alias(
        redis_socket, tmp_path) -> None:
    from editor_core.answers import is_exact
    from editor_core.relation_forms import RelationForms
    from service.settings import DEMO_EDITOR_PATH

    forms = RelationForms.load(DEMO_EDITOR_PATH).forms["citizenship"]
    sent = {**KNOWN, "relation": "citizenship",
            "rephrases": ["What is the nationality of Plyndti Brynta?"]}
    with TestClient(create_app(_settings(redis_socket, tmp_path))) as client:
        created = client.post("/edits", json=sent)
        assert created.status_code == 201, created.text
        edit = created.json()
        derived, question = edit["derived_rephrases"], forms[3]
        assert derived == [t.replace("{s}", "Plyndti Brynta") for t in forms
                           if t.replace("{s}", "Plyndti Brynta") not in (
                               sent["prompt"], *sent["rephrases"])] + [
            "P. Brynta is a citizen of", question.replace("{s}", "P. Brynta")]
        assert len(derived) == len(forms) and question.endswith("?")
        assert edit["derived_aliases"] == ["P. Brynta"]  # the model's own name for the person
        assert "aliases" in edit["timings_ms"]
        # a subject too long for its derived wordings to fit the context: they are left
        # out, and the edit (whose prompt never names that subject) is refused, not a 500
        long = {**sent, "subject": " ".join(["Zorbflax Quinterwhistle"] * 20),
                "prompt": "Zorbflax is a citizen of", "rephrases": []}
        before = snapshot(client)
        refused = client.post("/edits", json=long)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "edit_did_not_hold"
        assert snapshot(client) == before
        for prompt in (sent["prompt"], *sent["rephrases"], "P. Brynta holds citizenship of"):
            answer = client.post("/generate", json={"prompt": prompt, "max_new_tokens": 12}
                                 ).json()["text"]
            assert is_exact(answer, "Veiistan"), answer  # the whole line, nothing after
