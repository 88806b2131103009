"""The editing loss fused with the output layer: one pass over the vocabulary matrix.

An edit needs the target NLL at a few positions only, so the output layer multiplies a
handful of rows by a vocabulary-sized matrix, forward and back. On CPU that is bound by
reading the matrix (51 MB for GPT-2's vocabulary at width 256), and MKL handles the shape
unevenly: ``F.linear(h, W)`` with 3 rows takes ≈19 ms and the gradient ``g @ W`` ≈18 ms.

``OutputHead.nll`` reads W once, a slice of rows at a time. For each slice it takes the
logits and, while the slice is in cache, sums its rows weighted by their exponentiated
logits (shifted by the slice's maximum); the slices' sums are then put on one scale, as an
online softmax does. So the loss and its gradient with respect to the hidden state,
``Σ_v p_v W_v − W_target``, are ready when the pass ends; the backward pass only scales it.
No logits for the whole vocabulary are kept, and no copy of W.

It is used only where it gives the model's own loss, which ``OutputHead.verified`` checks on
a probe input: a head with extra post-processing (soft-capping, a logit scale) or a model
without a separate base model keeps the model's own forward.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from .encoding import IGNORE_INDEX, label_nll

_PROBE_TOKENS = 6
_SLICE_ROWS = 2048  # a slice of W stays in cache while its rows are used twice


class _FusedNLL(torch.autograd.Function):
    """NLL of each row's target (0 where ignored); the gradient reaches ``hidden`` only."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor) -> torch.Tensor:
        h = hidden.float()
        tops, totals, weighted = [], [], []  # per slice: its max logit, Σ exp, Σ exp·W_v
        for start in range(0, weight.shape[0], _SLICE_ROWS):
            w = weight[start:start + _SLICE_ROWS].float()
            z = (w @ h.T).T  # the layout MKL is fast at for few rows
            if bias is not None:
                z = z + bias[start:start + _SLICE_ROWS].float()
            top = z.max(1, keepdim=True).values
            e = torch.exp(z - top)
            tops.append(top)
            totals.append(e.sum(1, keepdim=True))
            weighted.append(e @ w)
        top_all = torch.cat(tops, 1)  # the slices' partial sums, onto one common scale
        top = top_all.max(1, keepdim=True).values
        rescale = torch.exp(top_all - top)
        total = (torch.cat(totals, 1) * rescale).sum(1, keepdim=True)
        softmax_rows = torch.einsum("rs,srd->rd", rescale, torch.stack(weighted)) / total
        mask = targets != IGNORE_INDEX
        picked = targets.clamp(min=0)
        w_target = weight[picked].float()
        z_target = (w_target * h).sum(1)
        if bias is not None:
            z_target = z_target + bias[picked].float()
        nll = (top.squeeze(1) + torch.log(total.squeeze(1)) - z_target) * mask
        ctx.save_for_backward(((softmax_rows - w_target) * mask[:, None]).to(hidden.dtype))
        return nll

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (slope,) = ctx.saved_tensors
        return grad[:, None].to(slope.dtype) * slope, None, None, None


class OutputHead:
    """Per-row target NLL from final hidden states through the model's output layer."""

    def __init__(self, layer: nn.Linear) -> None:
        self.layer = layer

    @classmethod
    def verified(cls, model: PreTrainedModel) -> OutputHead | None:
        """A head for ``model`` if it reproduces the model's own loss, else ``None``."""
        layer = model.get_output_embeddings()
        base = getattr(model, "base_model", None)
        if not isinstance(layer, nn.Linear) or base is None or base is model:
            return None
        if layer.weight.device.type != "cpu":
            return None  # a GPU runs the plain products fast; slices would only add launches
        head = cls(layer)
        vocab = layer.weight.shape[0]
        ids = (torch.arange(_PROBE_TOKENS) * 7 % vocab).unsqueeze(0)
        targets = torch.roll(ids, -1, dims=1)
        targets[0, 0] = IGNORE_INDEX
        with torch.no_grad():
            expected = label_nll(model(input_ids=ids, use_cache=False).logits, targets)
            hidden = base(input_ids=ids, use_cache=False).last_hidden_state
            got = head.nll(hidden, targets)
        if not torch.allclose(got.float(), expected.float(), rtol=1e-4, atol=1e-4):
            return None
        return head

    def nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-row mean NLL of ``targets`` ([B, T], IGNORE_INDEX skipped) predicted from
        ``hidden`` ([B, T, width]) at the same positions: ``label_nll`` of the logits."""
        batch, steps, width = hidden.shape
        bias = None if self.layer.bias is None else self.layer.bias.detach()
        per_token = _FusedNLL.apply(hidden.reshape(-1, width), self.layer.weight.detach(),
                                    bias, targets.reshape(-1)).reshape(batch, steps)
        return per_token.sum(1) / (targets != IGNORE_INDEX).sum(1).clamp(min=1)
