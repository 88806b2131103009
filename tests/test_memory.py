"""The edit memory on the demo LM and editor: routing, exact removal, batched rows."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from editor_core.checkpoint import load_editor, load_routing
from editor_core.combination import CombinationConfig
from editor_core.delta import EditDelta
from editor_core.editor import EditRequest
from editor_core.generation import SamplingParams, TokenStream, generate_together
from editor_core.ledger import LedgerError
from editor_core.live_stack import LiveStack, build_live_stack
from editor_core.probing import score_targets
from editor_lab.world.stream import lifelong_stream
from service.settings import DEMO_EDITOR_PATH, DEMO_LM_PATH

ANSWER = SamplingParams(max_new_tokens=8, stop=("\n",))


@pytest.fixture(scope="module")
def routed(world, exported):
    """A model of its own (the memory's hooks stay on it), its live stack (editor, memory,
    routing and ledger), and the deltas of a 12-edit held-out stream."""
    model = AutoModelForCausalLM.from_pretrained(DEMO_LM_PATH).eval()
    tokenizer = AutoTokenizer.from_pretrained(DEMO_LM_PATH)
    editor = load_editor(DEMO_EDITOR_PATH, model, tokenizer, basis="pristine",
                         combination=CombinationConfig("memory"))
    stack = build_live_stack(editor, load_routing(DEMO_EDITOR_PATH))
    stream = lifelong_stream(world, exported, 12, seed=3)
    deltas = [editor.compute(EditRequest(r.task, r.prompt, r.target_new, subject=r.subject))
              .compressed() for r in stream]
    return stack, stack.ledger, stream, deltas


@pytest.fixture()
def empty(routed):
    stack, ledger, stream, deltas = routed
    ledger.load([], ledger.version + 1)
    yield routed
    ledger.load([], ledger.version + 1)


def ask(stack: LiveStack, prompt: str, params: SamplingParams = ANSWER
        ) -> tuple[str, tuple[str, ...]]:
    stream = TokenStream(stack.model, stack.tokenizer, prompt, params, stack.routing)
    return stream.run(), stream.edits_fired


def probe_prompts(stream) -> list[str]:
    return [p.prompt for r in stream for probes in r.locality.values() for p in probes]


def logprobs(stack: LiveStack, prompts: list[str]) -> list[float]:
    return [s.logprob for s in score_targets(stack.model, stack.tokenizer, prompts,
                                             [" the"] * len(prompts),
                                             stack.editor.max_length)]


def test_an_edit_fires_on_its_prompt_and_paraphrase_and_nowhere_else(empty) -> None:
    stack, ledger, stream, deltas = empty
    unrelated = [p.prompt for p in stream[0].locality["Unrelated"]]
    pristine = logprobs(stack, unrelated)
    ledger.apply("e0", deltas[0])
    text, fired = ask(stack, stream[0].prompt)
    assert fired == ("e0",)
    assert ask(stack, stream[0].rephrases[-1])[1] == ("e0",)  # a wording it never saw
    assert logprobs(stack, unrelated) == pristine  # bit for bit: nothing fired there
    for prompt in unrelated + [p.prompt for p in stream[0].locality["Neighborhood"]]:
        assert ask(stack, prompt)[1] == ()


def test_routing_picks_the_right_edit_among_many(empty) -> None:
    stack, ledger, stream, deltas = empty
    for i, delta in enumerate(deltas):
        ledger.apply(f"e{i:02d}", delta)
    for i, record in enumerate(stream):
        assert ask(stack, record.prompt)[1] == (f"e{i:02d}",), record.prompt


def test_rollback_equals_a_memory_built_without_it(empty) -> None:
    stack, ledger, stream, deltas = empty
    ids = [f"e{i:02d}" for i in range(len(deltas))]
    prompts = [r.prompt for r in stream] + [r.rephrases[-1] for r in stream] + probe_prompts(
        stream)[:24]
    for edit_id, delta in zip(ids, deltas):
        ledger.apply(edit_id, delta)
    doomed = random.Random(0).sample(ids, 4)
    for edit_id in doomed:
        ledger.remove(edit_id)
    after_rollback = ([ask(stack, p) for p in prompts], logprobs(stack, prompts))
    rest = [a for a in ledger.active]
    ledger.load([], ledger.version + 1)
    for edit in reversed(rest):  # another order: the memory is a function of the set
        ledger.apply(edit.edit_id, edit.delta)
    assert ([ask(stack, p) for p in prompts], logprobs(stack, prompts)) == after_rollback
    assert not any(edit_id in doomed for _, fired in after_rollback[0] for edit_id in fired)


def test_rolling_back_every_edit_gives_the_pristine_model(empty) -> None:
    stack, ledger, stream, deltas = empty
    prompts = [r.prompt for r in stream] + probe_prompts(stream)[:12]
    pristine = ([ask(stack, p) for p in prompts], logprobs(stack, prompts))
    digest = ledger.live_digest()
    for i, delta in enumerate(deltas):
        ledger.apply(f"e{i:02d}", delta)
    assert ledger.live_digest() != digest
    changed = [ask(stack, r.prompt) for r in stream]
    assert [text for text, _ in changed] != [text for text, _ in pristine[0][:len(stream)]]
    assert all(fired == (f"e{i:02d}",) for i, (_, fired) in enumerate(changed))
    ledger.remove_many([f"e{i:02d}" for i in range(len(deltas))])
    assert ([ask(stack, p) for p in prompts], logprobs(stack, prompts)) == pristine
    assert ledger.live_digest() == digest


def test_rows_of_one_batch_fire_different_edits(empty) -> None:
    stack, ledger, stream, deltas = empty
    for i, delta in enumerate(deltas[:4]):
        ledger.apply(f"e{i:02d}", delta)
    prompts = [r.prompt for r in stream[:4]] + [stream[0].locality["Unrelated"][0].prompt]
    alone = [ask(stack, p) for p in prompts]
    streams = [TokenStream(stack.model, stack.tokenizer, p, ANSWER, stack.routing)
               for p in prompts]
    for _ in generate_together(stack.model, streams):
        pass
    assert [(s.text, s.edits_fired) for s in streams] == alone
    assert [s.edits_fired for s in streams] == [("e00",), ("e01",), ("e02",), ("e03",), ()]


def test_aliases_and_rephrases_become_routing_keys(empty) -> None:
    stack, ledger, stream, deltas = empty
    record = stream[0]
    alias = "Quorblat Vex"
    by_alias = record.prompt.replace(record.subject, alias)

    def edit(**extra) -> EditDelta:
        return stack.editor.compute(EditRequest(record.task, record.prompt, record.target_new,
                                          subject=record.subject, **extra)).compressed()

    keyed = edit(rephrases=(by_alias,))
    aliased = edit(rephrases=(by_alias,), aliases=(alias,))
    assert keyed.routing.keys.shape[0] == 2
    assert len(aliased.routing.subjects) > len(keyed.routing.subjects)
    ledger.apply("keyed", keyed)
    assert ask(stack, by_alias)[1] == ()  # a key there, but the subject never appears
    ledger.remove("keyed")
    ledger.apply("aliased", aliased)
    assert ask(stack, by_alias)[1] == ("aliased",)
    assert ask(stack, record.prompt)[1] == ("aliased",)


def test_an_edit_without_subject_fires_only_where_it_matches_closely(empty) -> None:
    stack, ledger, stream, deltas = empty
    record = stream[1]
    delta = stack.editor.compute(EditRequest(record.task, record.prompt, record.target_new)
                           ).compressed()
    assert delta.routing.subjects == ()
    ledger.apply("no-subject", delta)
    assert ask(stack, record.prompt)[1] == ("no-subject",)
    others = [p.prompt for p in stream[1].locality["Unrelated"]]
    assert all(ask(stack, p)[1] == () for p in others)


def test_routing_key_survives_the_stored_form(routed) -> None:
    _, _, _, deltas = routed
    back = EditDelta.from_bytes(deltas[0].to_bytes())
    assert torch.equal(back.routing.keys, deltas[0].routing.keys)
    assert back.routing.subjects == deltas[0].routing.subjects
    assert back.nbytes() == deltas[0].nbytes()


def test_a_delta_without_routing_key_is_refused_and_changes_nothing(empty) -> None:
    stack, ledger, stream, deltas = empty
    ledger.apply("e0", deltas[0])
    version, digest = ledger.version, ledger.live_digest()
    bare = EditDelta(deltas[1].factors)
    with pytest.raises(LedgerError, match="routing key"):
        ledger.apply("bare", bare)
    assert (ledger.version, ledger.live_digest(), len(ledger)) == (version, digest, 1)
    assert ask(stack, stream[0].prompt)[1] == ("e0",)


@pytest.mark.parametrize("family", ["gpt2", "gptj", "gpt_neox", "llama", "qwen2"])
def test_the_memory_routes_on_every_model_family(family: str) -> None:
    """Gate at the first edited module of each family: an edit fires on its prompt and
    changes the answer there only; removed, the logits are the pristine ones bit for bit."""
    from editor_core.editor import Editor
    from editor_core.hypernetwork import Hypernetwork, HypernetworkConfig
    from editor_core.routing_config import RoutingConfig
    from editor_core.specs import resolve_editable

    from .tiny_models import small_tokenizer, tiny_model

    tok = small_tokenizer()
    model = tiny_model(family, len(tok)).eval()
    hyper = Hypernetwork(resolve_editable(model), HypernetworkConfig(rank=8,
                                                                     init_step_size=5.0))
    editor = Editor(model, tok, hyper, basis="pristine",
                    combination=CombinationConfig("memory"))
    stack = build_live_stack(editor, RoutingConfig(editor.gate, threshold=0.99))
    ledger = stack.ledger
    request = EditRequest("counterfact", "The capital of Foxland is", "Mandan City",
                          subject="Foxland")
    other = "Which country is Brasreth in?"
    before = [logprobs(stack, [p])[0] for p in (request.prompt, other)]
    ledger.apply("e", editor.compute(request).compressed())
    fired = TokenStream(model, tok, request.prompt, SamplingParams(max_new_tokens=2),
                        stack.routing)
    fired.run()
    assert fired.edits_fired == ("e",)
    assert logprobs(stack, [request.prompt])[0] != before[0]
    assert logprobs(stack, [other])[0] == before[1]  # no subject, nothing fires
    ledger.remove("e")
    assert [logprobs(stack, [p])[0] for p in (request.prompt, other)] == before


def test_a_better_match_takes_over_from_an_earlier_fire(world) -> None:
    """Several edits of one person: an early position may reach the threshold with another
    relation's key; the prompt's own key, matched better at its last token, takes over, so
    the answer is generated under the prompt's own edit. Causal, so teacher-forced scores
    and decoding route alike, and removing both is the pristine model."""
    import dataclasses

    from editor_lab.world.stream import unfamiliar_stream

    model = AutoModelForCausalLM.from_pretrained(DEMO_LM_PATH).eval()
    tokenizer = AutoTokenizer.from_pretrained(DEMO_LM_PATH)
    editor = load_editor(DEMO_EDITOR_PATH, model, tokenizer, basis="pristine",
                         combination=CombinationConfig("memory"))
    permissive = dataclasses.replace(load_routing(DEMO_EDITOR_PATH), threshold=0.3)
    stack = build_live_stack(editor, permissive)
    ledger = stack.ledger
    person = [r for r in unfamiliar_stream(world, 8, seed=2)][:8]
    person = [r for r in person if r.subject == person[0].subject]
    assert len(person) >= 2
    prompts = [r.prompt for r in person]
    pristine = logprobs(stack, prompts)
    for i, r in enumerate(person):
        ledger.apply(f"p{i}", editor.compute(EditRequest(r.task, r.prompt, r.target_new,
                                                         subject=r.subject)).compressed())
    # the edit acting where the answer's first token is chosen (later tokens of a one-shot
    # answer that leaves its target are routed afresh)
    fired = [ask(stack, p, SamplingParams(max_new_tokens=1))[1] for p in prompts]
    assert [f[-1] for f in fired] == [f"p{i}" for i in range(len(person))]
    assert any(len(f) > 1 for f in fired)  # a takeover happened
    ledger.load([], ledger.version + 1)
    assert logprobs(stack, prompts) == pristine


def test_routing_is_per_model_and_closing_a_stack_takes_its_hooks_off() -> None:
    """Two models, each with its own stack and one edit: an edit acts only on its own
    model, and a closed stack's model is pristine again though its memory still holds the
    entry (nothing of the routing lives outside the runtime)."""
    from editor_core.editor import Editor
    from editor_core.hypernetwork import Hypernetwork, HypernetworkConfig
    from editor_core.routing_config import RoutingConfig
    from editor_core.specs import resolve_editable

    from .tiny_models import small_tokenizer, tiny_model

    tok = small_tokenizer()
    request = EditRequest("counterfact", "The capital of Foxland is", "Mandan City",
                          subject="Foxland")
    stacks = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = tiny_model("gpt2", len(tok)).eval()
        hyper = Hypernetwork(resolve_editable(model), HypernetworkConfig(rank=8,
                                                                         init_step_size=5.0))
        editor = Editor(model, tok, hyper, basis="pristine",
                        combination=CombinationConfig("memory"))
        stacks.append(build_live_stack(editor, RoutingConfig(editor.gate, threshold=0.99)))
    pristine = [logprobs(s, [request.prompt])[0] for s in stacks]
    first, second = stacks
    first.ledger.apply("e", first.editor.compute(request).compressed())
    assert ask(first, request.prompt)[1] == ("e",) and ask(second, request.prompt)[1] == ()
    assert logprobs(second, [request.prompt])[0] == pristine[1]
    assert logprobs(first, [request.prompt])[0] != pristine[0]
    mixed = [TokenStream(s.model, tok, request.prompt, ANSWER, s.routing) for s in stacks]
    with pytest.raises(ValueError, match="share the edit memory's routing"):
        next(generate_together(first.model, mixed))  # one batch decodes one model's routing
    first.close()
    assert len(first.memory) == 1
    assert logprobs(first, [request.prompt])[0] == pristine[0]
