"""Conversations written by the model's own chat template: the same tokens for a chat
question and for an edit stated as a chat, and where a template ends a reply."""

from __future__ import annotations

import copy

import pytest
from transformers import AutoTokenizer

from editor_core.chat_template import (
    ChatTemplateError,
    case_in_chat,
    chat_prompt,
    chat_wordings,
    turn_end,
    wraps_turns,
)
from editor_core.data.records import EditCase, Probe
from service.settings import DEMO_LM_PATH

ASKED = [{"role": "user", "content": "Which country is Plyndti Brynta a citizen of?"}]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(DEMO_LM_PATH)


def test_the_prompt_encodes_to_exactly_the_templates_tokens(tokenizer) -> None:
    written = tokenizer.apply_chat_template(ASKED, tokenize=False, add_generation_prompt=True)
    assert written.startswith(tokenizer.bos_token)  # the demo template writes its BOS
    prompt = chat_prompt(tokenizer, ASKED)
    assert prompt == ASKED[0]["content"]  # the tokenizer prepends the BOS itself
    assert tokenizer(prompt)["input_ids"] == tokenizer(
        written, add_special_tokens=False)["input_ids"]


def test_a_reply_ends_where_the_template_ends_an_assistant_turn(tokenizer) -> None:
    assert turn_end(tokenizer) == "\n"
    chatml = copy.deepcopy(tokenizer)
    chatml.chat_template = CHATML
    assert turn_end(chatml) == "<|im_end|>"
    assert chat_prompt(chatml, ASKED).endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_no_template_or_a_refused_conversation_is_an_error(tokenizer) -> None:
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    with pytest.raises(ChatTemplateError, match="no chat template"):
        chat_prompt(plain, ASKED)
    assert turn_end(plain) is None
    strict = copy.deepcopy(tokenizer)
    strict.chat_template = "{{ raise_exception('only users speak') }}"
    with pytest.raises(ChatTemplateError, match="refused"):
        chat_prompt(strict, ASKED)


def test_questions_are_also_keyed_as_a_chat_user_asks_them(tokenizer) -> None:
    wordings = ["Plyndti Brynta is a citizen of", ASKED[0]["content"]]
    assert chat_wordings(tokenizer, wordings) == ()  # the demo writes a turn as plain text
    chatml = copy.deepcopy(tokenizer)
    chatml.chat_template = CHATML
    assert chat_wordings(chatml, wordings) == (
        f"<|im_start|>user\n{ASKED[0]['content']}<|im_end|>\n<|im_start|>assistant\n",)


def test_a_case_in_chat_asks_every_prompt_as_a_users_turn(tokenizer) -> None:
    assert not wraps_turns(tokenizer)  # the demo template writes the plain question
    chatml = copy.deepcopy(tokenizer)
    chatml.chat_template = CHATML
    assert wraps_turns(chatml)
    case = EditCase("counterfact", "Plyndti Brynta", "Plyndti Brynta is a citizen of",
                    "Veiistan", rephrases=("What is the nationality of Plyndti Brynta?",),
                    locality={"Neighborhood": (Probe("Zoty Brynta works for", "Zentrix"),)},
                    portability={"Subject_Aliasing": (Probe("P. Brynta is a citizen of",
                                                            "Foxland"),)})
    asked = case_in_chat(chatml, case)

    def ask(text: str) -> str:
        return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    assert asked.prompt == ask(case.prompt)
    assert asked.rephrases == (ask(case.rephrases[0]),)
    assert asked.locality == {"Neighborhood": (Probe(ask("Zoty Brynta works for"), "Zentrix"),)}
    assert asked.portability == {"Subject_Aliasing": (
        Probe(ask("P. Brynta is a citizen of"), "Foxland"),)}
    assert (asked.subject, asked.target_new, asked.task) == (case.subject, case.target_new,
                                                             case.task)
