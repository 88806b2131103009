"""The OpenAI-compatible API, called by the official ``openai`` package against a real
``instructedit serve`` process: the edited model answers existing clients."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

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
