"""The editing pass's output head: the model's own logits and gradients, a fresh transpose
after the weight changes, and a fallback where it would not give the model's logits."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2LMHeadModel

from editor_core.editor import EditRequest
from editor_core.head import OutputHead

from .test_editing import make_editor
from .tiny_models import FAMILIES, small_tokenizer, tiny_model


@pytest.fixture(scope="module")
def tok():
    return small_tokenizer()


@pytest.mark.parametrize("rows", [1, 2, 7])
@pytest.mark.parametrize("bias", [False, True])
def test_logits_and_gradient_equal_the_linear_layer(rows: int, bias: bool) -> None:
    torch.manual_seed(rows)
    layer = torch.nn.Linear(16, 300, bias=bias)
    head = OutputHead(layer)
    hidden = torch.randn(rows, 16, requires_grad=True)
    upstream = torch.randn(rows, 300)
    ours = head(hidden)
    (grad_ours,) = torch.autograd.grad(ours, hidden, upstream)
    theirs = layer(hidden)
    (grad_theirs,) = torch.autograd.grad(theirs, hidden, upstream)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(grad_ours, grad_theirs)
    assert layer.weight.grad is None  # the output weight is never trained here


def test_leading_dimensions_are_kept() -> None:
    layer = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(3, 4, 8)
    torch.testing.assert_close(OutputHead(layer)(hidden), layer(hidden))


def test_transpose_follows_an_in_place_change_of_the_weight() -> None:
    layer = torch.nn.Linear(8, 50, bias=False)
    head = OutputHead(layer)
    hidden = torch.randn(2, 8, requires_grad=True)
    head(hidden)
    with torch.no_grad():
        layer.weight.mul_(3.0)
    upstream = torch.randn(2, 50)
    (grad,) = torch.autograd.grad(head(hidden), hidden, upstream)
    torch.testing.assert_close(grad, upstream @ layer.weight.detach())


@pytest.mark.parametrize("family", FAMILIES)
def test_verified_for_every_supported_family(family: str) -> None:
    model = tiny_model(family, 120).eval()
    head = OutputHead.verified(model)
    assert head is not None
    ids = torch.randint(0, 120, (2, 6))
    with torch.no_grad():
        hidden = model.base_model(input_ids=ids).last_hidden_state
        torch.testing.assert_close(head(hidden), model(input_ids=ids).logits, rtol=1e-4,
                                   atol=1e-5)


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
    editor.compute(EditRequest("counterfact", "The capital of Foxland is", "Mandan City"))


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
