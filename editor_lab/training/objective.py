"""The meta-training objective: run the model with an edit's ΔW, differentiably.

``edited_logits`` evaluates the model with W − ΔW substituted for each editable weight
(``torch.func.functional_call``), so gradients reach the hypernetwork and step sizes through
ΔW while the model's own weights stay untouched. Both terms score only answer tokens, with
the logits at position t predicting the token at t + 1 (the alignment the public locality
code gets wrong by one).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch.func import functional_call

from editor_core.data.records import Probe
from editor_core.delta import WeightFactors
from editor_core.editor import Editor
from editor_core.encoding import IGNORE_INDEX, EncodedBatch, encode_batch, target_nll


def encode_probes(editor: Editor, probes: Sequence[Probe]) -> EncodedBatch:
    return encode_batch(editor.tokenizer, [p.prompt for p in probes],
                        [p.answer for p in probes], editor.max_length)


def edited_weights(editor: Editor, factors: dict[str, WeightFactors]) -> dict[str, torch.Tensor]:
    params = dict(editor.edit_model.named_parameters())
    out = {}
    for w in editor.editable:
        f = factors[w.name]
        delta = (f.u.T @ f.d) * f.step
        out[w.name] = params[w.name] - w.to_stored(delta).to(params[w.name].dtype)
    return out


@contextmanager
def weights_substituted(model: torch.nn.Module, weights: dict[str, torch.Tensor]
                        ) -> Iterator[torch.nn.Module]:
    """The model with ``weights`` in place of its own, for code that calls it directly (e.g.
    ``generate``); gradient-free, single-threaded use only (validation)."""
    params = dict(model.named_parameters())
    saved = {name: params[name].data for name in weights}
    try:
        for name, value in weights.items():
            params[name].data = value.detach()
        yield model
    finally:
        for name, value in saved.items():
            params[name].data = value


def logits_with(editor: Editor, batch: EncodedBatch,
                weights: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """Logits of the model, with ``weights`` substituted (None: the model as it is)."""
    device = next(editor.edit_model.parameters()).device
    kwargs = {"input_ids": batch.input_ids.to(device),
              "attention_mask": batch.attention_mask.to(device), "use_cache": False}
    if weights is None:
        return editor.edit_model(**kwargs).logits
    return functional_call(editor.edit_model, weights, args=(), kwargs=kwargs).logits


def answer_mask(batch: EncodedBatch) -> torch.Tensor:
    """[B, T-1] mask of positions whose logits predict an answer token."""
    return batch.labels[:, 1:] != IGNORE_INDEX


def locality_kl(pre_logits: torch.Tensor, post_logits: torch.Tensor,
                batch: EncodedBatch) -> torch.Tensor:
    """Mean over answer tokens of KL(p_pre ‖ p_post)."""
    mask = answer_mask(batch).to(pre_logits.device)
    pre = torch.log_softmax(pre_logits[:, :-1].float(), -1)[mask]
    post = torch.log_softmax(post_logits[:, :-1].float(), -1)[mask]
    return (pre.exp() * (pre - post)).sum(-1).mean()


def token_accuracy(logits: torch.Tensor, batch: EncodedBatch) -> torch.Tensor:
    """Per row: fraction of answer tokens that are the argmax (KnowEdit's reliability)."""
    mask = answer_mask(batch).to(logits.device)
    hit = (logits[:, :-1].argmax(-1) == batch.labels[:, 1:].to(logits.device)) & mask
    return hit.sum(1).float() / mask.sum(1).clamp(min=1)


def unchanged_fraction(pre_logits: torch.Tensor, post_logits: torch.Tensor,
                       batch: EncodedBatch) -> torch.Tensor:
    """Per row: fraction of answer positions whose argmax the edit left alone (locality)."""
    mask = answer_mask(batch).to(pre_logits.device)
    same = (pre_logits[:, :-1].argmax(-1) == post_logits[:, :-1].argmax(-1)) & mask
    return same.sum(1).float() / mask.sum(1).clamp(min=1)


def edit_nll(logits: torch.Tensor, batch: EncodedBatch, reduction: str = "mean"
             ) -> torch.Tensor:
    """Mean over probes of the answer NLL, itself a mean (``"mean"``) or a sum (``"sum"``)
    over the answer's tokens. Summing weighs a long answer whose meaning hinges on one token
    (a ConvSent reply) like a short fact, instead of diluting that token."""
    labels = batch.labels.to(logits.device)
    per_probe = target_nll(logits, labels)
    if reduction == "sum":
        per_probe = per_probe * (labels[:, 1:] != IGNORE_INDEX).sum(1)
    elif reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
    return per_probe.mean()
