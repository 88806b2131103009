"""Per-probe measurements shared by every evaluated method (same code, same numbers).

- Teacher-forced token accuracy (KnowEdit's reliability / generalization / portability):
  one pass over ``prompt + " " + answer``; the share of answer tokens that are the argmax.
- Generative exact match: greedy decoding from the prompt produces the answer, as a user
  of the service would see it.
- Locality: the argmax tokens at a probe's answer positions, compared before and after an
  edit (agreement with the unedited model, not accuracy).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editor_core.answers import is_exact
from editor_core.data.records import Probe
from editor_core.encoding import IGNORE_INDEX, encode_batch
from editor_lab.decoding import greedy_continuations


@torch.no_grad()
def _answer_predictions(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                        probes: Sequence[Probe], max_length: int, batch_size: int
                        ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per probe: (argmax tokens at its answer positions, the answer tokens)."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(probes), batch_size):
        chunk = probes[i:i + batch_size]
        batch = encode_batch(tokenizer, [p.prompt for p in chunk], [p.answer for p in chunk],
                             max_length)
        logits = model(input_ids=batch.input_ids.to(device),
                       attention_mask=batch.attention_mask.to(device)).logits
        predicted = logits[:, :-1].argmax(-1).cpu()
        targets = batch.labels[:, 1:]
        for row in range(len(chunk)):
            mask = targets[row] != IGNORE_INDEX
            out.append((predicted[row][mask], targets[row][mask]))
    return out


def token_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   probes: Sequence[Probe], max_length: int = 256,
                   batch_size: int = 64) -> list[float]:
    """Teacher-forced share of answer tokens predicted exactly, per probe."""
    return [(pred == gold).float().mean().item() for pred, gold in
            _answer_predictions(model, tokenizer, probes, max_length, batch_size)]


def answer_argmax(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                  probes: Sequence[Probe], max_length: int = 256,
                  batch_size: int = 64) -> list[torch.Tensor]:
    """The model's argmax tokens at each probe's answer positions (for locality)."""
    return [pred for pred, _ in
            _answer_predictions(model, tokenizer, probes, max_length, batch_size)]


def unchanged_share(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor]
                    ) -> list[float]:
    """Per probe: share of answer positions whose argmax token is the same as before."""
    return [(a == b).float().mean().item() for a, b in zip(before, after)]


def exact_match(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                probes: Sequence[Probe], batch_size: int = 64) -> list[float]:
    """The greedy answer's line is exactly the probe's answer (1.0) or not (0.0)."""
    if not probes:
        return []
    longest = max(len(tokenizer(" " + p.answer, add_special_tokens=False)["input_ids"])
                  for p in probes)
    # room for the answer, a period and the line's end
    outs = greedy_continuations(model, tokenizer, [p.prompt for p in probes], longest + 3,
                                batch_size)
    return [float(is_exact(o, p.answer)) for o, p in zip(outs, probes)]
