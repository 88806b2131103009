"""Judging and refining single edits on the demo LM and editor, through the edit memory."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from editor_core.answers import FittedAnswer
from editor_core.checkpoint import load_editor, load_routing
from editor_core.combination import CombinationConfig
from editor_core.delta import STORE_DTYPE, EditDelta
from editor_core.editor import EditRequest
from editor_core.generation import SamplingParams, TokenStream
from editor_core.live_stack import build_live_stack
from editor_core.refine import EditJudge, EditRefiner, RefineConfig
from editor_core.routing import MemoryRouting
from service.settings import DEMO_EDITOR_PATH, DEMO_LM_PATH

UNFAMILIAR = EditRequest("recent", "The capital of Qwertania is", "Blorvik", subject="Qwertania")
KNOWN = EditRequest("counterfact", "Plyndti Brynta is a citizen of", "Veiistan",
                    subject="Plyndti Brynta")


@pytest.fixture(scope="module")
def setup():
    model = AutoModelForCausalLM.from_pretrained(DEMO_LM_PATH).eval()
    tokenizer = AutoTokenizer.from_pretrained(DEMO_LM_PATH)
    editor = load_editor(DEMO_EDITOR_PATH, model, tokenizer, basis="pristine",
                         combination=CombinationConfig("memory"))
    stack = build_live_stack(editor, load_routing(DEMO_EDITOR_PATH))
    return editor, stack.routing, stack.ledger


def judge_for(editor, routing: MemoryRouting, **config) -> EditJudge:
    refiner = EditRefiner(editor.edit_model, editor.tokenizer, editor.editable,
                          editor.max_length, RefineConfig(**config))
    return EditJudge(refiner, editor.model, routing)


def greedy(editor, routing: MemoryRouting, prompt: str) -> str:
    return TokenStream(editor.model, editor.tokenizer, prompt,
                       SamplingParams(max_new_tokens=8, stop=("\n",)), routing).run().strip()


def test_a_delta_that_holds_is_kept_as_it_is(setup) -> None:
    editor, routing, _ = setup
    delta = editor.compute(KNOWN).compressed()
    verdict = judge_for(editor, routing).judge(KNOWN, delta)
    assert verdict.outcome == "one_shot" and verdict.steps == 0 and verdict.delta is delta
    assert verdict.holds and all(s.token_accuracy == 1.0 for s in verdict.scores)


def test_a_delta_that_misses_is_refined_and_then_answers_greedily(setup) -> None:
    editor, routing, ledger = setup
    delta = editor.compute(UNFAMILIAR).compressed()
    before = greedy(editor, routing, UNFAMILIAR.prompt)
    verdict = judge_for(editor, routing).judge(UNFAMILIAR, delta)
    assert verdict.outcome == "refined" and verdict.steps > 0
    # a trial only
    assert len(routing.memory) == 0 and greedy(editor, routing, UNFAMILIAR.prompt) == before
    refined = verdict.delta
    assert refined.routing is delta.routing  # routes where the one-shot edit did
    for name, f in refined.factors.items():
        assert f.u.dtype == STORE_DTYPE and f.u.shape == delta.factors[name].u.shape
        assert f.step == delta.factors[name].step
    assert EditDelta.from_bytes(refined.to_bytes()).factors.keys() == refined.factors.keys()
    ledger.apply("refined", EditDelta.from_bytes(refined.to_bytes()))  # as stored
    try:
        assert greedy(editor, routing, UNFAMILIAR.prompt).startswith("Blorvik")
    finally:
        ledger.remove("refined")
    assert greedy(editor, routing, UNFAMILIAR.prompt) == before


def test_the_budget_bounds_refinement(setup) -> None:
    editor, routing, _ = setup
    delta = editor.compute(UNFAMILIAR).compressed()
    judged = judge_for(editor, routing, max_steps=0).judge(UNFAMILIAR, delta)
    assert judged.outcome == "did_not_hold" and judged.steps == 0 and not judged.holds
    one = judge_for(editor, routing, max_steps=1, lr=1e-6).judge(UNFAMILIAR, delta)
    assert one.steps == 1 and one.outcome == "did_not_hold"


def test_the_locality_term_keeps_the_next_token_where_the_change_would_act(setup) -> None:
    editor, _, _ = setup
    delta = editor.compute(UNFAMILIAR).compressed()
    locality = ["The capital of Veiistan is"]
    fits = {w: EditRefiner(editor.edit_model, editor.tokenizer, editor.editable,
                           editor.max_length, RefineConfig(locality_weight=w)).fit(
        delta, [UNFAMILIAR.prompt], [FittedAnswer(UNFAMILIAR.target, ".\n")], locality)
        for w in (0.0, 10.0)}
    refiner = EditRefiner(editor.edit_model, editor.tokenizer, editor.editable,
                          editor.max_length)
    away = refiner._locality_batch(locality, "cpu")
    kl = {w: float(refiner._locality_kl({n: (f.u, f.d, f.step) for n, f in
                                          fit.delta.factors.items()}, *away))
          for w, fit in fits.items()}
    assert fits[10.0].outcome == "refined" and kl[10.0] < kl[0.0]


@pytest.mark.parametrize("bad", [{"max_steps": -1}, {"max_ms": 0}, {"lr": 0},
                                 {"locality_weight": -1}])
def test_refinement_settings_are_checked(bad) -> None:
    with pytest.raises(ValueError):
        RefineConfig(**bad)


def test_a_trial_is_seen_by_its_own_thread_only(setup) -> None:
    editor, routing, _ = setup
    entry = routing.memory.entry("\x00t", editor.compute(KNOWN).compressed())

    def fired() -> tuple[str, ...]:
        stream = TokenStream(editor.model, editor.tokenizer, KNOWN.prompt,
                             SamplingParams(max_new_tokens=3), routing)
        stream.run()
        return stream.edits_fired

    other: list[tuple[str, ...]] = []
    with routing.trial([entry]):
        mine = fired()
        thread = threading.Thread(target=lambda: other.append(fired()))
        thread.start()
        thread.join()
    assert mine == ("\x00t",) and other == [()]
    assert len(routing.memory) == 0 and fired() == ()


def test_the_scale_candidate_only_scales_the_one_shot_change(setup) -> None:
    editor, routing, _ = setup
    delta = editor.compute(UNFAMILIAR).compressed()
    verdict = judge_for(editor, routing, strategy="scale").judge(UNFAMILIAR, delta)
    assert verdict.outcome in ("refined", "did_not_hold")
    ratios = {f.step / delta.factors[n].step for n, f in verdict.delta.factors.items()}
    assert len(ratios) == 1 and ratios.pop() in (1.0, *RefineConfig().scales)
    assert all(f.u is delta.factors[n].u for n, f in verdict.delta.factors.items())


def test_a_scaling_that_holds_counts_as_a_step_and_is_kept(setup) -> None:
    editor, routing, _ = setup
    held = editor.compute(KNOWN).compressed()
    assert judge_for(editor, routing).judge(KNOWN, held).outcome == "one_shot"
    weak = EditDelta({n: dataclasses.replace(f, step=f.step / 6) for n, f in
                      held.factors.items()}, held.n_requests, held.ridge_inputs, held.routes)
    assert judge_for(editor, routing, max_steps=0).judge(KNOWN, weak).outcome == "did_not_hold"
    verdict = judge_for(editor, routing, strategy="scale", scales=(6.0,)).judge(KNOWN, weak)
    assert verdict.outcome == "refined" and verdict.steps == 1
    assert {f.step for f in verdict.delta.factors.values()} == {
        f.step for f in held.factors.values()}
    none = judge_for(editor, routing, strategy="scale", scales=(6.0,), max_steps=0)
    assert none.judge(KNOWN, weak).outcome == "did_not_hold"  # no budget: no scaling tried
