"""What the model believes: how likely it finds a continuation, and what it answers.

Used to measure an edit on the spot (before and after) and to answer score queries. The
target is tokenised in context exactly as the editing loss does (``encode_batch``), so the
probability reported is that of the tokens the editor was asked to make likely.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .encoding import IGNORE_INDEX, encode_batch


@dataclass(frozen=True)
class TargetScore:
    """One continuation's log-probability (natural log, summed over its tokens), its token
    count, and the teacher-forced share of its tokens that are the model's argmax."""

    logprob: float
    tokens: int
    token_accuracy: float

    @property
    def probability(self) -> float:
        return math.exp(self.logprob)


@torch.no_grad()
def score_targets(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                  prompts: Sequence[str], targets: Sequence[str], max_length: int,
                  batch_size: int = 32, end_with_eos: Sequence[bool] | None = None
                  ) -> list[TargetScore]:
    """Score each ``targets[i]`` as the continuation of ``prompts[i]`` (followed by the
    end-of-sequence token where ``end_with_eos[i]``), in one pass each."""
    if len(prompts) != len(targets):
        raise ValueError("one target per prompt")
    device = next(model.parameters()).device
    scores: list[TargetScore] = []
    for start in range(0, len(prompts), batch_size):
        batch = encode_batch(tokenizer, list(prompts[start:start + batch_size]),
                             list(targets[start:start + batch_size]), max_length,
                             end_with_eos=None if end_with_eos is None else
                             list(end_with_eos[start:start + batch_size]))
        logits = model(input_ids=batch.input_ids.to(device),
                       attention_mask=batch.attention_mask.to(device),
                       use_cache=False).logits[:, :-1].float().cpu()
        labels = batch.labels[:, 1:]
        mask = labels != IGNORE_INDEX
        logp = torch.log_softmax(logits, dim=-1)
        picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        hits = (logits.argmax(-1) == labels) & mask
        for row in range(labels.shape[0]):
            n = int(mask[row].sum())
            scores.append(TargetScore(float((picked[row] * mask[row]).sum()), n,
                                      float(hits[row].sum()) / n))
    return scores
