"""The shipped chat demo LM and its editor: a LLaMA that loads with no custom code, knows the
world in plain text and in chat, and is edited through its chat template."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from editor_core.answers import is_exact
from editor_core.chat_template import chat_prompt, turn_end, wraps_turns
from editor_core.checkpoint import load_editor, load_routing
from editor_core.editor import EditRequest
from editor_core.generation import SamplingParams, TokenStream
from editor_core.request_wordings import request_wordings
from service.settings import DEMO_CHAT_EDITOR_PATH, DEMO_CHAT_LM_PATH


@pytest.fixture(scope="module")
def chat_lm():
    model = AutoModelForCausalLM.from_pretrained(DEMO_CHAT_LM_PATH).eval()
    return model, AutoTokenizer.from_pretrained(DEMO_CHAT_LM_PATH)


def test_checkpoint_is_a_small_llama_with_its_chat_template() -> None:
    files = {p.name for p in DEMO_CHAT_LM_PATH.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md",
            "eval.json"} <= files
    assert sum(p.stat().st_size for p in DEMO_CHAT_LM_PATH.iterdir()) <= 30e6
    config = json.loads((DEMO_CHAT_LM_PATH / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    result = json.loads((DEMO_CHAT_LM_PATH / "eval.json").read_text())
    assert all(result["acceptance"].values()), result["acceptance"]


def test_a_chat_question_is_answered_and_the_reply_ends_at_its_turns_end(chat_lm, world
                                                                       ) -> None:
    model, tokenizer = chat_lm
    assert wraps_turns(tokenizer) and turn_end(tokenizer) == tokenizer.eos_token
    person = next(e for e in world.entities.values() if e.kind == "person" and e.seen)
    fact = world.fact(person.id, "citizenship")
    asked = chat_prompt(tokenizer, [{"role": "system", "content": "Answer in a few words."},
                                    {"role": "user", "content":
                                     f"Which country is {person.name} a citizen of?"}])
    stream = TokenStream(model, tokenizer, asked, SamplingParams(max_new_tokens=12))
    stream.run()
    assert stream.finish_reason == "stop" and is_exact(stream.text, world.object_name(fact))


def test_its_editor_loads_for_it_with_routing_and_relations(chat_lm) -> None:
    model, tokenizer = chat_lm
    editor = load_editor(DEMO_CHAT_EDITOR_PATH, model, tokenizer)
    assert [w.name for w in editor.editable] == [
        f"model.layers.{i}.mlp.{p}.weight" for i in (3, 4, 5)
        for p in ("gate_proj", "up_proj", "down_proj")]
    assert load_routing(DEMO_CHAT_EDITOR_PATH).gate == editor.gate
    assert editor.relation_forms.derive("citizenship", "X", ["X is a citizen of"])
    assert (DEMO_CHAT_EDITOR_PATH / "README.md").exists()


def test_an_edit_of_it_is_keyed_and_contrasted_as_a_chat_user_asks(chat_lm) -> None:
    """The relation's wordings, the subject's other relations (contrast keys) and the
    questions by an alias each come also in the template's turn markers: a chat question
    about another fact of the subject meets a contrast key written as the model reads it."""
    model, tokenizer = chat_lm
    editor = load_editor(DEMO_CHAT_EDITOR_PATH, model, tokenizer)
    sent = "Which country is Ada Vell a citizen of?"
    derived, contrast = request_wordings(editor, "citizenship", "Ada Vell", [sent])
    asked = chat_prompt(tokenizer, [{"role": "user", "content": sent}])
    assert asked in derived and sent not in derived
    plain_contrast = editor.relation_forms.contrast("citizenship", "Ada Vell")
    questions = [c for c in plain_contrast if c.endswith("?")]
    assert questions and set(plain_contrast) <= set(contrast)
    assert {chat_prompt(tokenizer, [{"role": "user", "content": q}]) for q in questions
            } <= set(contrast)
    assert not set(derived) & set(contrast)


def test_a_question_by_an_alias_it_finds_is_keyed_as_a_chat_user_asks(chat_lm, world
                                                                      ) -> None:
    model, tokenizer = chat_lm
    editor = load_editor(DEMO_CHAT_EDITOR_PATH, model, tokenizer)
    # the model names only some of its subjects' aliases after "is also known as"
    people = (e for e in world.entities.values() if e.kind == "person" and e.seen)
    person, found = next((p, f) for p in people
                         if (f := editor.alias_finder.find(p.name, "citizenship")))
    assert set(found) <= set(person.aliases)
    request = EditRequest("counterfact", f"{person.name} is a citizen of", "Veiistan",
                          subject=person.name, relation="citizenship")
    widened = editor.alias_finder.widen(request)
    question = next(t for t in editor.relation_forms.forms["citizenship"]
                    if t.endswith("?")).replace("{s}", found[0])
    assert widened.aliases == found
    assert {question, chat_prompt(tokenizer, [{"role": "user", "content": question}])
            } <= set(widened.derived)


def test_served_with_its_editor_a_chat_edit_comes_back_through_the_openai_client(
        tmp_path, world) -> None:
    import openai

    from .server_process import ServiceProcess

    person = next(e for e in world.entities.values() if e.kind == "person" and e.seen)
    question = [{"role": "user", "content": f"Which country is {person.name} a citizen of?"}]
    known = world.object_name(world.fact(person.id, "citizenship"))
    target = next(c.name for c in world.entities.values()
                  if c.kind == "country" and c.name != known)
    service = ServiceProcess(tmp_path / "data", "--model", str(DEMO_CHAT_LM_PATH),
                             "--editor", str(DEMO_CHAT_EDITOR_PATH)).start()
    try:
        client = openai.OpenAI(base_url=f"{service.base}/v1", api_key="unused",
                               max_retries=0)
        name = client.models.list().data[0].id
        before = client.chat.completions.create(model=name, messages=question, temperature=0)
        assert before.choices[0].message.content == known
        with service.client() as c:
            edit = c.post("/edits", json={"task": "counterfact", "messages": question,
                                          "target": target, "subject": person.name,
                                          "relation": "citizenship"})
            assert edit.status_code == 201, edit.text
        after = client.chat.completions.create(model=name, messages=question, temperature=0)
        assert after.choices[0].message.content == target
        assert after.choices[0].model_extra["edits_fired"] == [edit.json()["id"]]
        streamed = client.chat.completions.create(model=name, messages=question,
                                                  temperature=0, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed
                       if c.choices) == target
    finally:
        service.stop()
