"""The byte-level BPE tokenizer: any text round-trips; made-up names stay multi-token."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from editor_lab.demo_lm.tokenizer import train_bpe_tokenizer
from editor_lab.world.corpus import tokenizer_corpus

from .conftest import DEMO_LM


@pytest.fixture(scope="module", params=["fresh", "shipped"])
def tokenizer(request, world):
    if request.param == "fresh":
        return train_bpe_tokenizer(tokenizer_corpus(world))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEMO_LM)


@settings(max_examples=300, deadline=None)
@given(text=st.text(min_size=0, max_size=80))
def test_arbitrary_unicode_round_trips(tokenizer, text: str) -> None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("text", ["Zoë Ångström — 東京 🚀", "Kraków, Łódź", "\t tabs\nand\r\n",
                                  "Aki Kaurismäki", ""])
def test_known_hard_strings_round_trip(tokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_every_entity_name_is_several_tokens(tokenizer, world) -> None:
    for e in world.entities.values():
        assert len(tokenizer(" " + e.name, add_special_tokens=False)["input_ids"]) >= 2, e.name


def test_bos_is_prepended_like_every_training_row(tokenizer) -> None:
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.pad_token == "<|endoftext|>"
    ids = tokenizer("Hello")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.bos_token_id not in ids[1:]
    assert ids[1:] == tokenizer("Hello", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Hello"
