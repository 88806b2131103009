"""The output layer's projection for the editing pass, in the layouts CPU BLAS is fast at.

An edit needs logits at only a few positions (those predicting a target token), so the
output layer multiplies a handful of rows by a vocabulary-sized matrix, forward and back.
On CPU, MKL handles that shape very unevenly: ``F.linear(h, W)`` with 3 rows against GPT-2's
50,257 × 256 embedding takes ≈19 ms and the gradient ``g @ W`` another ≈18 ms, while the same
products written as ``W @ hᵀ`` and ``Wᵀ @ gᵀ`` (with a contiguous Wᵀ) take ≈2 and ≈3 ms. The
matrix is only 51 MB, so the slow forms run at a tenth of memory bandwidth.

``OutputHead`` computes the logits with those forms. It keeps a transposed copy of the
output weight (vocabulary × width fp32, e.g. 51 MB for the configuration above), refreshed
whenever the weight's storage or version changes, so an edited or reloaded head is never
stale. It is used only where it gives the model's own logits, which ``OutputHead.verified``
checks on a probe input: a head with extra post-processing (soft-capping, a logit scale) or
a model without a separate base model falls back to the model's own forward.
"""

from __future__ import annotations

import threading

import torch
from torch import nn
from transformers import PreTrainedModel

_PROBE_TOKENS = 4


class _Projection(torch.autograd.Function):
    """logits = h Wᵀ (+ b); only h receives a gradient (the editing pass never trains W)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, weight_t: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight_t)
        logits = hidden @ weight_t if hidden.shape[0] == 1 else (weight @ hidden.T).T
        return logits if bias is None else logits + bias

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight_t,) = ctx.saved_tensors
        return (weight_t @ grad.T).T, None, None, None


class OutputHead:
    """Logits from final hidden states through the model's output layer (see module doc)."""

    def __init__(self, layer: nn.Linear) -> None:
        self.layer = layer
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None
        self._transposed: torch.Tensor | None = None

    @classmethod
    def verified(cls, model: PreTrainedModel) -> OutputHead | None:
        """A head for ``model`` if it reproduces the model's logits on CPU, else ``None``."""
        layer = model.get_output_embeddings()
        base = getattr(model, "base_model", None)
        if not isinstance(layer, nn.Linear) or base is None or base is model:
            return None
        if layer.weight.device.type != "cpu":
            return None  # cuBLAS has no such small-row pathology; no copy is worth keeping
        head = cls(layer)
        ids = torch.arange(_PROBE_TOKENS).unsqueeze(0) % layer.weight.shape[0]
        with torch.no_grad():
            expected = model(input_ids=ids, use_cache=False).logits[0]
            hidden = base(input_ids=ids, use_cache=False).last_hidden_state[0]
            got = head(hidden)
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4,
                                                             atol=1e-4):
            return None
        return head

    def _weight_t(self) -> torch.Tensor:
        weight = self.layer.weight
        key = (weight.data_ptr(), weight._version)
        with self._lock:
            if self._key != key or self._transposed is None:
                self._transposed = weight.detach().t().contiguous()
                self._key = key
            return self._transposed

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits for hidden states of any leading shape (…, width)."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        bias = None if self.layer.bias is None else self.layer.bias.detach()
        logits = _Projection.apply(flat, self.layer.weight.detach(), self._weight_t(), bias)
        return logits.reshape(*hidden.shape[:-1], -1)
