"""The OpenAI-compatible API, called by the official ``openai`` package against a real
``instructedit serve`` process: the edited model answers existing clients."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import openai
import pytest

from editor_core.answers import is_exact

from .server_process import ServiceProcess
from .test_acceptance import EDIT, PROMPT, TARGET


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    process = ServiceProcess(tmp_path_factory.mktemp("openai") / "data").start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(service: ServiceProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.base}/v1", api_key="unused", max_retries=0)


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["demo-lm"]


def test_completions_plain_and_streamed_answer_with_the_edit(
        client: openai.OpenAI, service: ServiceProcess) -> None:
    before = client.completions.create(model="demo-lm", prompt=PROMPT, max_tokens=6,
                                       temperature=0)
    assert before.object == "text_completion" and before.system_fingerprint == "v0"
    assert not before.choices[0].text.strip().startswith(TARGET)
    assert before.usage.completion_tokens == 6 or before.choices[0].finish_reason == "stop"
    with service.client() as c:
        c.post("/edits", json=EDIT).raise_for_status()

    after = client.completions.create(model="demo-lm", prompt=PROMPT, max_tokens=6,
                                      temperature=0, stop=["."])
    assert after.choices[0].text.strip().startswith(TARGET)
    assert after.system_fingerprint == "v1"
    assert after.usage.total_tokens == after.usage.prompt_tokens + \
        after.usage.completion_tokens

    chunks = list(client.completions.create(model="demo-lm", prompt=PROMPT, max_tokens=6,
                                            temperature=0, stop=["."], stream=True))
    assert "".join(c.choices[0].text for c in chunks) == after.choices[0].text
    assert chunks[-1].choices[0].finish_reason == after.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])

    both = client.completions.create(model="demo-lm", prompt=[PROMPT, "Hello"], max_tokens=4,
                                     temperature=0)
    assert [c.index for c in both.choices] == [0, 1]
    seeded = [client.completions.create(model="demo-lm", prompt="Hello", max_tokens=8,
                                        temperature=1.0, seed=7).choices[0].text
              for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_what_cannot_be_honoured_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hi", max_tokens=2)
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.completions.create(model="demo-lm", prompt="Hi", n=2, logprobs=3)
    assert refused.value.body["details"]["parameters"] == ["n", "logprobs"]
    with pytest.raises(openai.UnprocessableEntityError):
        client.completions.create(model="demo-lm", prompt="Hi", max_tokens=100_000)
    with pytest.raises(openai.UnprocessableEntityError):
        client.completions.create(model="demo-lm", prompt=["a", "b"], stream=True)


CHAT_EDIT = {"task": "counterfact", "prompt": "Grylstis Brynta is a citizen of",
             "target": "Vuthovia", "subject": "Grylstis Brynta", "relation": "citizenship"}
QUESTION = [{"role": "user", "content": "Which country is Grylstis Brynta a citizen of?"}]


def test_chat_completions_plain_and_streamed_answer_with_the_edit(
        client: openai.OpenAI, service: ServiceProcess) -> None:
    before = client.chat.completions.create(model="demo-lm", messages=QUESTION, temperature=0)
    assert before.object == "chat.completion" and before.choices[0].message.role == "assistant"
    assert not is_exact(before.choices[0].message.content, "Vuthovia")
    with service.client() as c:
        edit = c.post("/edits", json=CHAT_EDIT).raise_for_status().json()

    after = client.chat.completions.create(model="demo-lm", messages=QUESTION, temperature=0)
    choice = after.choices[0]
    assert choice.message.content == "Vuthovia"  # the whole reply, nothing before or after
    assert choice.finish_reason == "stop" and choice.model_extra["edits_fired"] == [edit["id"]]
    assert after.system_fingerprint == f"v{edit['version']}"
    assert after.usage.total_tokens == after.usage.prompt_tokens + after.usage.completion_tokens

    chunks = list(client.chat.completions.create(model="demo-lm", messages=QUESTION,
                                                 temperature=0, stream=True))
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice.message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].choices[0].model_extra["edits_fired"] == [edit["id"]]
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    counted = list(client.chat.completions.create(
        model="demo-lm", messages=QUESTION, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert counted[-1].choices == [] and counted[-1].usage == after.usage
    assert [c.choices[0].delta.content for c in counted[:-1]] == [
        c.choices[0].delta.content for c in chunks]

    talk = [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": [{"type": "text", "text": CHAT_EDIT["prompt"]}]}]
    later = client.chat.completions.create(model="demo-lm", messages=talk, temperature=0,
                                           max_completion_tokens=8)
    assert is_exact(later.choices[0].message.content, "Vuthovia")


def test_an_edit_stated_as_a_chat_holds_when_a_chat_user_asks(
        client: openai.OpenAI, service: ServiceProcess) -> None:
    asked = [{"role": "system", "content": "Answer briefly."},
             {"role": "user", "content": "Which country is Zoty Brynta a citizen of?"}]
    before = client.chat.completions.create(model="demo-lm", messages=asked, temperature=0)
    assert not is_exact(before.choices[0].message.content, "Stouara")
    with service.client() as c:
        created = c.post("/edits", json={"task": "counterfact", "messages": asked,
                                         "target": "Stouara", "subject": "Zoty Brynta"})
        assert created.status_code == 201, created.text
        edit = created.json()
        # the record keeps the messages and the prompt the template wrote for them
        assert edit["messages"][1]["content"] == asked[1]["content"]
        assert edit["prompt"] == "Answer briefly.\nWhich country is Zoty Brynta a citizen of?"
        for bad, code in (({"prompt": "Zoty Brynta is a citizen of"}, "invalid_edit"),
                          ({"messages": [*asked, {"role": "assistant", "content": "No."}]},
                           "invalid_messages")):
            refused = c.post("/edits", json={"task": "counterfact", "target": "Stouara",
                                              "messages": asked, **bad})
            assert refused.status_code == 422 and refused.json()["error"]["code"] == code
        neither = c.post("/edits", json={"task": "counterfact", "target": "Stouara"})
        assert neither.json()["error"]["code"] == "invalid_request"
    after = client.chat.completions.create(model="demo-lm", messages=asked, temperature=0)
    assert after.choices[0].message.content == "Stouara"
    assert after.choices[0].model_extra["edits_fired"] == [edit["id"]]


def test_chat_parameters_that_cannot_be_honoured_are_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.chat.completions.create(model="demo-lm", messages=QUESTION, n=2, logprobs=True)
    assert refused.value.body["details"]["parameters"] == ["n", "logprobs"]
    with pytest.raises(openai.UnprocessableEntityError) as tools:
        client.chat.completions.create(model="demo-lm", messages=QUESTION, tools=[{
            "type": "function", "function": {"name": "f", "parameters": {}}}])
    assert tools.value.body["details"]["parameters"] == ["tools"]
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="demo-lm", messages=[])


def test_a_model_without_a_chat_template_refuses_chat(redis_socket, tmp_path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import DEMO_LM_PATH, ServiceSettings

    plain = tmp_path / "plain-lm"
    shutil.copytree(DEMO_LM_PATH, plain, ignore=shutil.ignore_patterns("chat_template.jinja"))
    settings = ServiceSettings(model=str(plain), redis_url=f"unix://{redis_socket}",
                               data_dir=tmp_path / "data", threads=1)
    with TestClient(create_app(settings)) as c:
        refused = c.post("/v1/chat/completions", json={"model": "plain-lm",
                                                        "messages": QUESTION})
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "no_chat_template"
        completed = c.post("/v1/completions", json={"model": "plain-lm", "prompt": "Hello",
                                                     "max_tokens": 2})
        assert completed.status_code == 200  # plain completions still serve
        chat_edit = c.post("/edits", json={"task": "counterfact", "target": "Veiistan",
                                           "messages": QUESTION})
        assert chat_edit.json()["error"]["code"] == "no_chat_template"


def test_under_a_template_with_turn_markers_an_edit_is_keyed_where_chat_users_ask(
        redis_socket, tmp_path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import DEMO_LM_PATH, ServiceSettings

    from .test_chat_template import CHATML

    marked = tmp_path / "chatml-lm"
    shutil.copytree(DEMO_LM_PATH, marked)
    (marked / "chat_template.jinja").write_text(CHATML)
    settings = ServiceSettings(model=str(marked), redis_url=f"unix://{redis_socket}",
                               data_dir=tmp_path / "data", threads=1)
    question = "Which country is Plyndti Brynta a citizen of?"
    with TestClient(create_app(settings)) as c:
        edit = c.post("/edits", json={**CHAT_EDIT, "prompt": "Plyndti Brynta is a citizen of",
                                      "subject": "Plyndti Brynta", "target": "Veiistan"})
        assert edit.status_code == 201, edit.text
        derived = edit.json()["derived_rephrases"]
        assert question in derived  # the relation's plain question, and as a chat turn:
        assert f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n" in derived
        asked = c.post("/v1/chat/completions", json={
            "model": "chatml-lm", "messages": [{"role": "user", "content": question}],
            "temperature": 0, "max_completion_tokens": 4}).json()["choices"][0]
        assert asked["edits_fired"][0] == edit.json()["id"]
        # fitted there, the reply opens with the target (without the chat form it does
        # not); where it ends is not fitted here: to the demo tokenizer "<|im_end|>" is
        # plain text, where a chat model's own end-of-turn token is its EOS
        assert asked["message"]["content"].startswith("Veiistan")
