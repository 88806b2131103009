"""Exact answers: the one definition, how an edited answer ends, and edits that stop there."""

from __future__ import annotations

import pytest
import torch

from editor_core.answers import AnswerEndings, FittedAnswer, is_exact, starts_with_target
from editor_core.delta import EditDelta
from editor_core.editor import EditRequest
from editor_core.encoding import IGNORE_INDEX, encode_pair
from editor_core.generation import SamplingParams, TokenStream
from editor_core.memory import MemoryEntry
from editor_core.refine import RefineConfig
from editor_core.routing import _answer_state

from . import test_refine
from .test_refine import judge_for

setup = test_refine.setup  # test_refine's fixture, shared (its editor, routing and ledger)

# Edits whose one-shot change keeps pushing target tokens after the target (real-world
# text, out of the demo world, and an invented place).
RUN_ON = [EditRequest("counterfact", "The Eiffel Tower stands in the city of", "Rome",
                      subject="Eiffel Tower"),
          EditRequest("zsre", "Which company makes the iPhone?", "Nokia", subject="iPhone"),
          EditRequest("recent", "The capital of Qwertania is", "Blorvik", subject="Qwertania")]


@pytest.mark.parametrize("text, target, exact, prefix", [
    (" Rome", "Rome", True, True),
    (" Rome.", "Rome", True, True),
    (" Rome.\nWhat is the nationality of D. Lomkirk?", "Rome", True, True),
    (" Argentinaaaaaaa", "Argentina", False, True),
    (" Chile Chile Chile", "Chile", False, True),
    (" Nokia is also kia.", "Nokia", False, True),
    (" Rome..", "Rome", False, True),
    (" Foxistan.", "Argentina", False, False),
    (" Acme Inc.", "Acme Inc.", True, True),
    (" Acme Inc", "Acme Inc.", True, False),
    ("", "Rome", False, False),
    (" Rome", " ", False, False),
])
def test_an_answer_is_exactly_its_target_up_to_the_end_of_its_line(text, target, exact,
                                                                    prefix) -> None:
    assert is_exact(text, target) is exact
    assert starts_with_target(text, target) is prefix


def test_endings_never_double_a_period_and_an_eos_ending_is_a_label(setup) -> None:
    editor, _, _ = setup
    endings = AnswerEndings(editor.tokenizer, editor.max_length)
    assert {(a.ending, a.eos) for a in endings.candidates("Rome")} == {
        (".\n", False), ("\n", False), (".", True), ("", True)}
    assert {a.text for a in endings.candidates("Acme Inc.")} == {"Acme Inc.\n", "Acme Inc."}
    ids, labels = encode_pair(editor.tokenizer, "X is a citizen of", "Rome.",
                              editor.max_length, end_with_eos=True)
    assert ids[-1] == labels[-1] == editor.tokenizer.eos_token_id
    plain, plain_labels = encode_pair(editor.tokenizer, "X is a citizen of", "Rome.",
                                      editor.max_length)
    assert ids[:-1] == plain and labels[:-1] == plain_labels
    for path in endings.answer_paths("X is a citizen of", "Rome"):
        assert path[-1] in endings.ends  # every accepted answer ends its line


def test_the_chosen_ending_is_the_pristine_models_likeliest(setup) -> None:
    editor, _, _ = setup
    endings = AnswerEndings(editor.tokenizer, editor.max_length)
    prompt, target = "Plyndti Brynta is a citizen of", "Faemovia"  # what the LM answers
    [chosen] = endings.choose(editor.edit_model, [prompt], target)
    options = endings.candidates(target)
    batch, own = endings.encode([prompt] * len(options), options)
    with torch.no_grad():
        logits = editor.edit_model(input_ids=batch.input_ids,
                                   attention_mask=batch.attention_mask).logits
    logp = torch.log_softmax(logits[:, :-1], -1).gather(
        -1, batch.labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    totals = (logp * (batch.labels[:, 1:] != IGNORE_INDEX)).sum(1)
    assert chosen == options[int(totals.argmax())]
    assert chosen.ending.startswith(".")  # the world's statements end with a period
    # the pristine model writes its own answer exactly, with the chosen ending
    assert endings.check(logits, batch.labels, own)[options.index(chosen)].exact


@pytest.mark.parametrize("request_", RUN_ON, ids=["eiffel", "iphone", "qwertania"])
def test_a_judged_edit_answers_exactly_its_target_and_then_lets_the_model_write(
        setup, request_) -> None:
    editor, routing, ledger = setup
    delta = editor.compute(request_).compressed()
    verdict = judge_for(editor, routing).judge(request_, delta)
    assert verdict.holds and not verdict.time_capped
    ledger.apply("e", EditDelta.from_bytes(verdict.delta.to_bytes()))  # as stored
    try:
        stream = TokenStream(editor.model, editor.tokenizer, request_.prompt,
                             SamplingParams(max_new_tokens=24), routing)  # no stop string
        text = stream.run()
    finally:
        ledger.remove("e")
    assert is_exact(text, request_.target), text
    assert stream.edits_fired[:1] == ("e",)
    rest = text.split("\n", 1)[1] if "\n" in text else ""
    assert request_.target not in rest  # nothing pushes the target again after its line


def test_an_entry_acts_while_its_answer_is_written_and_stops_at_the_line_end() -> None:
    paths = ((7, 8, 9, 1), (7, 8, 2))  # target 7 8, then "." "\n" or "\n"; ends 1, 2
    entry = MemoryEntry("e", torch.zeros(1, 2), (), {}, paths, (1, 2, 0))
    assert _answer_state(entry, [7]) == "writing"
    assert _answer_state(entry, [7, 8, 9]) == "writing"
    assert _answer_state(entry, [7, 8, 9, 1]) == "done"  # the line end is the model's
    assert _answer_state(entry, [7, 8, 2]) == "done"
    assert _answer_state(entry, [7, 5]) == "left"  # another answer: stop pushing
    opinion = MemoryEntry("o", torch.zeros(1, 2), (), {}, (), (1, 2, 0))
    assert _answer_state(opinion, [4, 5, 6]) == "writing"
    assert _answer_state(opinion, [4, 5, 2]) == "done"
    legacy = MemoryEntry("l", torch.zeros(1, 2), (), {})  # stored before answers existed
    assert _answer_state(legacy, [4, 2]) == "writing"


def test_refinement_is_budgeted_in_steps_and_the_time_guard_says_when_it_cut(setup) -> None:
    editor, routing, _ = setup
    request_ = RUN_ON[0]
    delta = editor.compute(request_).compressed()
    runs = [judge_for(editor, routing).judge(request_, delta) for _ in range(2)]
    assert runs[0].outcome == runs[1].outcome == "refined"
    assert runs[0].steps == runs[1].steps and not runs[0].time_capped  # same steps each time
    cut = judge_for(editor, routing, max_ms=1e-3).judge(request_, delta)
    assert cut.time_capped and cut.outcome == "did_not_hold"
    assert RefineConfig().max_ms >= 10 * 500  # a guard, far above a step budget's time
    assert FittedAnswer("Rome", ".\n").text == "Rome.\n"
