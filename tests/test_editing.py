"""Computing an edit: tokenisation, the captured gradient, the hypernetwork, batches, dtypes."""

from __future__ import annotations

import threading

import pytest
import torch

from editor_core.delta import STORE_REL_TOL, EditDelta, merge
from editor_core.editor import EditRequest, Editor
from editor_core.encoding import (
    IGNORE_INDEX,
    EditInputError,
    encode_batch,
    encode_pair,
    target_nll,
)
from editor_core.hypernetwork import Hypernetwork, HypernetworkConfig
from editor_core.ledger import WeightLedger
from editor_core.specs import resolve_editable

from .tiny_models import FAMILIES, bos_tokenizer, small_tokenizer, tiny_model

REQ = EditRequest("counterfact", "The capital of Foxland is", "Mandan City")
REQ2 = EditRequest("zsre", "Which country is Brasreth in?", "Triristan")


@pytest.fixture(scope="module")
def tok():
    return small_tokenizer()


def make_editor(model, tok, step: float = 1e-2, rank: int = 8, **kw) -> Editor:
    hyper = Hypernetwork(resolve_editable(model), HypernetworkConfig(rank=rank,
                                                                     init_step_size=step))
    return Editor(model, tok, hyper, **kw)


# -- tokenisation ------------------------------------------------------------------------

def test_target_tokens_match_generation_time_tokens(tok) -> None:
    ids, labels = encode_pair(tok, "The capital of Foxland is", "Mandan City", 64)
    prompt_ids = tok("The capital of Foxland is")["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids  # the prompt tokenises as when generating
    target = [t for t in labels if t != IGNORE_INDEX]
    assert target == tok(" Mandan City", add_special_tokens=False)["input_ids"]
    assert tok.decode(target) == " Mandan City"  # BPE leading space belongs to the target
    # A prompt ending in a space, or a target starting with one, is not given a second one.
    ids2, labels2 = encode_pair(tok, "The capital of Foxland is ", "Mandan City", 64)
    assert tok.decode([t for t in labels2 if t != IGNORE_INDEX]).strip() == "Mandan City"
    assert "  " not in tok.decode(ids2)


def test_bos_is_input_but_never_a_label() -> None:
    tok = bos_tokenizer()
    ids, labels = encode_pair(tok, "Hello there", "world", 64)
    assert ids[0] == tok.bos_token_id and labels[0] == IGNORE_INDEX
    assert tok.bos_token_id not in [t for t in labels if t != IGNORE_INDEX]
    assert tok.decode([t for t in labels if t != IGNORE_INDEX]) == " world"


def test_overlong_prompt_is_cut_from_the_left_never_the_target() -> None:
    tok = bos_tokenizer()
    prompt = "one two three four five six seven eight nine ten " * 6 + "and finally"
    ids, labels = encode_pair(tok, prompt, "Mandan City", 16)
    assert len(ids) == 16 and ids[0] == tok.bos_token_id  # BOS survives truncation
    assert tok.decode([t for t in labels if t != IGNORE_INDEX]) == " Mandan City"
    assert tok.decode(ids).endswith("and finally Mandan City")
    with pytest.raises(EditInputError, match="target must stay whole"):
        encode_pair(tok, "x", "word " * 40, 16)


@pytest.mark.parametrize("prompt, target, message", [
    ("The capital is", "", "target is empty"), ("The capital is", "   ", "target is empty"),
    ("", "Paris", "prompt is empty")])
def test_empty_inputs_are_refused(tok, prompt, target, message) -> None:
    with pytest.raises(EditInputError, match=message):
        encode_pair(tok, prompt, target, 64)


def test_padding_is_never_a_label(tok) -> None:
    batch = encode_batch(tok, ["a b c d e f g h", "short"], ["x", "longer target here"], 64)
    pad = batch.attention_mask == 0
    assert pad.any()
    assert (batch.labels[pad] == IGNORE_INDEX).all()


# -- the captured gradient and the hypernetwork ------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_identity_editor_delta_is_the_scaled_gradient_step(family: str, tok) -> None:
    """A fresh editor (identity network, no statistics) gives ΔW = α · ∂L/∂W."""
    model = tiny_model(family, len(tok))
    editor = make_editor(model, tok, step=0.5)
    delta = editor.compute(REQ)
    batch = editor.encode([REQ])
    reference = tiny_model(family, len(tok))
    loss = target_nll(reference(input_ids=batch.input_ids,
                                attention_mask=batch.attention_mask).logits, batch.labels).sum()
    loss.backward()
    params = dict(reference.named_parameters())
    for w in editor.editable:
        stored = w.to_stored(delta.factors[w.name].dense(torch.float32))
        assert stored.shape == params[w.name].shape  # orientation matches the weight
        torch.testing.assert_close(stored, 0.5 * params[w.name].grad, rtol=1e-4, atol=1e-7)


def test_identity_with_statistics_is_the_normalised_gradient(tok) -> None:
    model = tiny_model("gpt2", len(tok))
    editor = make_editor(model, tok, step=0.1)
    captured = editor.capture(editor.encode([REQ, REQ2]))
    editor.hypernetwork.train()
    editor.transform(captured)  # gathers statistics
    editor.hypernetwork.eval()
    delta = editor.compute(REQ)
    name = editor.editable[0].name
    net = editor.hypernetwork.nets[editor.hypernetwork.slot(name)[0]]
    raw = editor.capture(editor.encode([REQ]))
    u = (raw.u[name] - net.norm_u.mean.float()) / (net.norm_u.std().float() + 1e-7)
    d = (raw.delta[name] - net.norm_delta.mean.float()) / (net.norm_delta.std().float() + 1e-7)
    torch.testing.assert_close(delta.factors[name].dense(torch.float32), 0.1 * u.T @ d,
                               rtol=1e-4, atol=1e-6)


def test_network_starts_as_identity_and_learns_statistics() -> None:
    model = tiny_model("gpt2", 100)
    hyper = Hypernetwork(resolve_editable(model), HypernetworkConfig(rank=4)).eval()
    u, d = torch.randn(5, 32), torch.randn(5, 128)
    name = hyper.editable[0].name
    out_u, out_d = hyper.transform(name, u, d)
    assert torch.equal(out_u, u) and torch.equal(out_d, d)
    hyper.train()
    rows = torch.randn(400, 32) * 3 + 1
    hyper.transform(name, rows, torch.randn(400, 128))
    net = hyper.nets[hyper.slot(name)[0]]
    torch.testing.assert_close(net.norm_u.mean.float(), rows.mean(0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(net.norm_u.std().float(), rows.std(0), rtol=1e-4, atol=1e-4)
    hyper.eval()
    before = net.norm_u.count.clone()
    hyper.transform(name, rows, torch.randn(400, 128))
    assert torch.equal(net.norm_u.count, before)  # frozen at inference


def test_an_edit_lowers_the_target_nll(tok) -> None:
    model = tiny_model("gpt2", len(tok))
    editor = make_editor(model, tok, step=1.0)
    batch = editor.encode([REQ])
    before = editor.capture(batch).loss
    ledger = WeightLedger(model, editor.editable)
    ledger.apply("e1", editor.compute(REQ))
    after = editor.capture(batch).loss
    assert after.item() < before.item() - 1e-3


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_batch_delta_equals_the_single_deltas(family: str) -> None:
    tok = bos_tokenizer() if family == "llama" else small_tokenizer()
    model = tiny_model(family, len(tok))
    editor = make_editor(model, tok)
    editor.hypernetwork.train()
    editor.transform(editor.capture(editor.encode([REQ, REQ2])))  # statistics
    editor.hypernetwork.eval()
    with torch.no_grad():
        for net in editor.hypernetwork.nets.values():
            net.blocks[0].U.normal_(std=0.1)  # a non-identity network
    batch = editor.compute([REQ, REQ2])
    singles = [editor.compute(REQ), editor.compute(REQ2)]
    for name in batch.factors:
        total = sum(s.factors[name].dense() for s in singles)
        torch.testing.assert_close(batch.factors[name].dense(), total, rtol=1e-4, atol=1e-6)
    for part, single in zip(batch.split(), singles):
        for name in part.factors:
            torch.testing.assert_close(part.factors[name].dense(), single.factors[name].dense(),
                                       rtol=1e-4, atol=1e-6)


def test_nothing_is_left_on_the_model_after_an_edit(tok) -> None:
    model = tiny_model("gpt2", len(tok))
    for p in model.parameters():
        p.requires_grad_(False)
    editor = make_editor(model, tok)
    editor.compute([REQ, REQ2])
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_hooks_are_removed_even_when_the_forward_fails(tok, monkeypatch) -> None:
    model = tiny_model("gpt2", len(tok))
    editor = make_editor(model, tok)

    def broken(*args, **kwargs):
        raise RuntimeError("forward failed")

    monkeypatch.setattr(model.transformer, "forward", broken)
    with pytest.raises(RuntimeError, match="forward failed"):
        editor.compute(REQ)
    assert all(not m._forward_hooks for m in model.modules())


def test_capture_ignores_forward_passes_from_other_threads(tok) -> None:
    model = tiny_model("gpt2", len(tok))
    editor = make_editor(model, tok)
    ids = tok("Hello there", return_tensors="pt")["input_ids"]
    store: dict = {}
    with editor._capture_hooks(store):
        other = threading.Thread(target=lambda: model(input_ids=ids))
        other.start()
        other.join()
        assert store == {}  # a concurrent generation is not captured
        with torch.no_grad():
            model(input_ids=ids)
        assert set(store) == {w.name for w in editor.editable}


def test_overlong_edit_input_keeps_its_instruction(tok) -> None:
    model = tiny_model("gpt2", len(tok))
    editor = make_editor(model, tok)
    long = EditRequest("counterfact", "word " * 200 + "The capital of Foxland is", "Mandan")
    instruction = editor.edit_input(long)[: -len(long.prompt)]
    editor.max_length = len(tok(instruction)["input_ids"]) + 12
    batch = editor.encode([long])
    text = tok.decode(batch.input_ids[0], skip_special_tokens=True)
    assert batch.input_ids.shape[1] == editor.max_length
    assert text.startswith(editor.edit_input(long)[:40])  # Task/Description intact
    assert text.endswith("The capital of Foxland is Mandan")
    editor.max_length = len(tok(instruction)["input_ids"])  # no room left for the prompt
    with pytest.raises(EditInputError, match="instruction and target must stay whole"):
        editor.encode([long])


def test_instructions_change_the_edit_input_and_can_be_switched_off(tok) -> None:
    model = tiny_model("gpt2", len(tok))
    with_inst = make_editor(model, tok)
    without = make_editor(model, tok, use_instructions=False)
    assert with_inst.edit_input(REQ).startswith("Task: CounterFact\nDescription: ")
    assert with_inst.edit_input(REQ).endswith("Input: " + REQ.prompt)
    assert without.edit_input(REQ) == REQ.prompt
    custom = EditRequest("counterfact", REQ.prompt, REQ.target, description="Custom words.")
    assert "Description: Custom words.\n" in with_inst.edit_input(custom)
    with pytest.raises(EditInputError, match="unknown task"):
        with_inst.compute(EditRequest("nope", "p", "t"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_are_edited_in_fp32_without_nan(tok, dtype) -> None:
    model = tiny_model("gpt2", len(tok)).to(dtype)
    editor = make_editor(model, tok)
    delta = editor.compute([REQ, REQ2])
    for f in delta.factors.values():
        assert f.u.dtype == f.d.dtype == torch.float32
        assert torch.isfinite(f.u).all() and torch.isfinite(f.d).all() and f.d.abs().sum() > 0
    # The same weights in an fp32 model give the same delta: the path really is fp32.
    reference = make_editor(tiny_model("gpt2", len(tok)).to(dtype).float(), tok)
    expected = reference.compute([REQ, REQ2])
    for name, f in delta.factors.items():
        torch.testing.assert_close(f.dense(), expected.factors[name].dense(), rtol=1e-5,
                                   atol=1e-9)
    # Editing in the model's own dtype (no replica) still gives finite factors.
    native = make_editor(model, tok, fp32_replica=False).compute([REQ, REQ2])
    assert all(torch.isfinite(f.d).all() and f.d.abs().sum() > 0
               for f in native.factors.values())
    params = dict(model.named_parameters())
    original = {w.name: params[w.name].detach().clone() for w in editor.editable}
    ledger = WeightLedger.for_editor(editor)
    for i, part in enumerate(delta.split()):
        ledger.apply(f"e{i}", part)
    assert all(params[n].dtype == dtype and torch.isfinite(params[n]).all() for n in original)
    ledger.reset()
    assert all(torch.equal(params[n], original[n]) for n in original)


# -- the delta as data ---------------------------------------------------------------------

def test_delta_bytes_round_trip_and_split_merge(tok) -> None:
    model = tiny_model("gpt2", len(tok))
    editor = make_editor(model, tok)
    delta = editor.compute([REQ, REQ2])
    parts = delta.split()
    again = EditDelta.from_bytes(parts[1].to_bytes())
    for name, f in parts[1].factors.items():
        assert torch.equal(again.factors[name].u, f.u) and again.factors[name].step == f.step
    merged = merge(parts)
    for name in delta.factors:
        assert torch.equal(merged.factors[name].u, delta.factors[name].u)
        assert merged.factors[name].spans == delta.factors[name].spans
    with pytest.raises(ValueError, match="split"):
        delta.to_bytes()


@pytest.mark.parametrize("rel_tol", [1e-6, 1e-3, 1e-1])
def test_compression_keeps_the_delta_within_tolerance(tok, rel_tol: float) -> None:
    model = tiny_model("gpt2", len(tok))
    editor = make_editor(model, tok)
    delta = editor.compute([REQ, REQ2])
    small = delta.compressed(rel_tol, torch.float32)
    assert small.n_requests == 2
    for whole, part in zip(delta.split(), small.split()):
        for name, f in whole.factors.items():
            full, approx = f.dense(), part.factors[name].dense()
            assert (full - approx).norm() <= rel_tol * full.norm() * (1 + 1e-6) + 1e-12
            assert part.factors[name].rows <= f.rows
    if rel_tol >= 1e-3:
        assert small.nbytes() < delta.nbytes()


def test_stored_form_is_bf16_and_close(tok) -> None:
    model = tiny_model("gpt2", len(tok))
    editor = make_editor(model, tok)
    delta = editor.compute(REQ)
    stored = delta.compressed()
    for name, f in delta.factors.items():
        g = stored.factors[name]
        assert g.u.dtype == g.d.dtype == torch.bfloat16
        # truncated to the store's tolerance, plus bf16 rounding
        assert (f.dense() - g.dense()).norm() <= (STORE_REL_TOL + 0.01) * f.dense().norm()
    again = EditDelta.from_bytes(stored.to_bytes())
    assert all(torch.equal(again.factors[n].d, stored.factors[n].d) for n in stored.factors)


def test_compressing_a_zero_delta_gives_no_rows() -> None:
    from editor_core.delta import WeightFactors

    f = WeightFactors(torch.zeros(4, 8), torch.zeros(4, 16), 1.0, ((0, 4),))
    assert f.compressed(1e-3).rows == 0


def test_editing_the_demo_lm_moves_it_to_the_new_fact(demo_lm, world) -> None:
    """On the shipped LM, a gradient-step edit (a fresh editor: the identity network, a
    large enough step) makes the model answer with the new target; undone, the old answer."""
    from editor_core.generation import SamplingParams, TokenStream

    def answer(prompt: str) -> str:
        return TokenStream(model, tokenizer, prompt, SamplingParams(max_new_tokens=4)).run()

    model, tokenizer = demo_lm
    editor = make_editor(model, tokenizer, step=0.3, rank=16)
    person = world.of_kind("person", seen=True)[0]
    request = EditRequest("counterfact", f"{person.name} is a citizen of", "Foxland",
                          subject=person.name)
    editable = {w.name: w for w in editor.editable}
    assert len(editable) == 6 and all(n.startswith("transformer.h.") for n in editable)
    batch = editor.encode([request])
    before = editor.capture(batch).loss.item()
    old_answer = answer(request.prompt)
    assert not old_answer.strip().startswith("Foxland")
    ledger = WeightLedger(model, editor.editable)
    try:
        delta = editor.compute(request)
        for name, f in delta.factors.items():
            assert f.u.shape[1] == editable[name].d_in and f.d.shape[1] == editable[name].d_out
        ledger.apply("e", delta)
        assert editor.capture(batch).loss.item() < before / 10
        assert answer(request.prompt).strip().startswith("Foxland")
    finally:
        ledger.reset()
    assert answer(request.prompt) == old_answer


def test_per_edit_delta_scaling_makes_each_edit_unit_norm(tok) -> None:
    model = tiny_model("gpt2", len(tok))
    editable = resolve_editable(model)
    plain = Editor(model, tok, Hypernetwork(editable, HypernetworkConfig(rank=8,
                                                                         init_step_size=1.0)))
    scaled = Editor(model, tok, Hypernetwork(editable, HypernetworkConfig(
        rank=8, init_step_size=1.0, delta_scaling="per_edit")))
    for hyper in (plain.hypernetwork, scaled.hypernetwork):
        hyper.eval()
    raw, unit = plain.compute(REQ), scaled.compute(REQ)
    captured = plain.capture(plain.encode([REQ]))
    for name, f in unit.factors.items():
        norm = captured.delta[name].norm()
        torch.testing.assert_close(f.dense(), raw.factors[name].dense() / norm.double(),
                                   rtol=1e-4, atol=1e-9)
    # Scaling is per request: a batch is still the sum of its requests' edits.
    batch = scaled.compute([REQ, REQ2])
    single = [scaled.compute(REQ), scaled.compute(REQ2)]
    for name in batch.factors:
        expected = sum(s.factors[name].dense() for s in single)
        torch.testing.assert_close(batch.factors[name].dense(), expected,
                                   rtol=1e-4, atol=1e-5 * expected.abs().max().item())
    with pytest.raises(ValueError, match="delta_scaling"):
        HypernetworkConfig(delta_scaling="bogus")


def test_weights_sharing_a_shape_network_transform_together_as_alone() -> None:
    model = tiny_model("gpt2", 100)
    hyper = Hypernetwork(resolve_editable(model), HypernetworkConfig(rank=4))
    torch.manual_seed(0)
    for p in hyper.parameters():  # a trained-looking network, not the identity
        p.data.normal_(0, 0.3)
    hyper.eval()
    rows = {w.name: (torch.randn(3 + i, w.d_in), torch.randn(3 + i, w.d_out))
            for i, w in enumerate(hyper.editable)}
    together = hyper.transform_many(rows)
    assert len({hyper.slot(n)[0] for n in rows}) < len(rows)  # some share a network
    for name, (u, d) in rows.items():
        alone = hyper.transform(name, u, d)
        torch.testing.assert_close(together[name][0], alone[0])
        torch.testing.assert_close(together[name][1], alone[1])
