"""The editing loss fused with the output layer: the model's own loss and gradient, and a
fallback where it would not give the model's loss."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2LMHeadModel

from editor_core.editor import EditRequest
from editor_core.encoding import IGNORE_INDEX, label_nll, predicting_positions
from editor_core.head import OutputHead

from .test_editing import make_editor
from .tiny_models import FAMILIES, small_tokenizer, tiny_model


@pytest.fixture(scope="module")
def tok():
    return small_tokenizer()


@pytest.mark.parametrize("vocab", [300, 5000])  # one slice of the matrix, and several
@pytest.mark.parametrize("bias", [False, True])
def test_loss_and_gradient_equal_those_of_the_logits(vocab: int, bias: bool) -> None:
    torch.manual_seed(vocab)
    layer = torch.nn.Linear(16, vocab, bias=bias)
    hidden = torch.randn(3, 4, 16, requires_grad=True)
    targets = torch.randint(0, vocab, (3, 4))
    targets[0, :2] = IGNORE_INDEX
    targets[2] = IGNORE_INDEX  # a row with nothing to predict
    weights = torch.tensor([1.0, 2.0, 3.0])
    ours = OutputHead(layer).nll(hidden, targets)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), hidden)
    theirs = label_nll(layer(hidden), targets)
    (grad_theirs,) = torch.autograd.grad((theirs * weights).sum(), hidden)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(grad_ours, grad_theirs)
    assert ours[2] == 0 and grad_ours[2].abs().max() == 0
    assert layer.weight.grad is None  # the output weight is never trained here


def test_large_logits_do_not_overflow() -> None:
    layer = torch.nn.Linear(8, 4000, bias=False)
    with torch.no_grad():
        layer.weight.mul_(1e4)
    hidden = torch.randn(1, 2, 8)
    targets = torch.tensor([[5, 3000]])
    ours = OutputHead(layer).nll(hidden, targets)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, label_nll(layer(hidden).double(), targets).float())


@pytest.mark.parametrize("family", FAMILIES)
def test_verified_for_every_supported_family(family: str) -> None:
    model = tiny_model(family, 120).eval()
    head = OutputHead.verified(model)
    assert head is not None
    ids = torch.randint(0, 120, (2, 6))
    targets = torch.roll(ids, -1, dims=1)
    with torch.no_grad():
        hidden = model.base_model(input_ids=ids).last_hidden_state
        torch.testing.assert_close(head.nll(hidden, targets),
                                   label_nll(model(input_ids=ids).logits, targets))


class _ScaledLogits(GPT2LMHeadModel):
    """A model that post-processes its logits (as soft-capping models do)."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 2.0
        return out


def test_a_model_that_changes_its_logits_keeps_its_own_forward(tok) -> None:
    base = tiny_model("gpt2", len(tok))
    model = _ScaledLogits(base.config)
    model.load_state_dict(base.state_dict())
    model.eval()
    assert OutputHead.verified(model) is None
    editor = make_editor(model, tok)
    assert editor._head is None
    request = EditRequest("counterfact", "The capital of Foxland is", "Mandan City")
    batch = editor.encode([request])
    loss = editor.capture(batch).loss
    # the loss the edit is computed from is the model's own (its doubled logits)...
    kept = predicting_positions(batch.labels)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(loss, label_nll(logits[:, kept], batch.labels[:, kept + 1]))
    # ...not the one the plain output layer would give
    plain = make_editor(base.eval(), tok)
    assert plain._head is not None
    assert not torch.allclose(loss, plain.capture(plain.encode([request])).loss)
    delta = editor.compute(request)
    assert delta.factors and all(torch.isfinite(f.dense()).all() and f.dense().any()
                                 for f in delta.factors.values())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_an_edit_is_the_same_through_either_head(family: str, tok) -> None:
    model = tiny_model(family, len(tok)).eval()
    fast = make_editor(model, tok, step=1.0)
    assert fast._head is not None
    plain = make_editor(model, tok, step=1.0)
    plain._head = None
    requests = [EditRequest("counterfact", "The capital of Foxland is", "Mandan City"),
                EditRequest("zsre", "Which country is Brasreth in?", "Triristan")]
    a = fast.capture(fast.encode(requests))
    b = plain.capture(plain.encode(requests))
    torch.testing.assert_close(a.loss, b.loss)
    for name in a.u:
        torch.testing.assert_close(a.u[name], b.u[name])
        torch.testing.assert_close(a.delta[name], b.delta[name], rtol=1e-4, atol=1e-7)
    assert a.spans == b.spans
