"""Turning (input text, target) pairs into token ids and labels for the editing loss.

Rules that public editors get wrong and this module keeps: the target is tokenised in
context (prompt + separator + target, split by character offsets), so BPE leading spaces
and SentencePiece prefixes come out exactly as at generation time; a BOS token that the
tokenizer adds is kept as input but never a label; padding is never a label; an overlong
input loses tokens from the left of the prompt, never from the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


class EditInputError(ValueError):
    """An edit request that cannot be turned into a loss (empty target, target too long)."""


@dataclass(frozen=True)
class EncodedBatch:
    input_ids: torch.Tensor  # [B, T], right-padded
    attention_mask: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T], IGNORE_INDEX except target tokens


def join_prompt_target(prompt: str, target: str) -> tuple[str, int]:
    """``prompt + " " + target`` (no doubled space) and where the target's text begins."""
    if not prompt or prompt[-1].isspace() or target[:1].isspace():
        return prompt + target, len(prompt)
    return f"{prompt} {target}", len(prompt)


def encode_pair(tokenizer: PreTrainedTokenizerBase, prompt: str, target: str,
                max_length: int, keep_prefix: int = 0, end_with_eos: bool = False
                ) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one prompt/target pair; with ``end_with_eos`` the
    end-of-sequence token follows the target as its last label (an answer that ends).

    If the pair is too long, prompt tokens are dropped from the left, but never a leading
    BOS, the first ``keep_prefix`` characters of the prompt (an instruction), or the target.
    """
    if not target or not target.strip():
        raise EditInputError("the target is empty: there is nothing to edit in")
    if not prompt or not prompt.strip():
        raise EditInputError("the prompt is empty: an edit needs a prompt to answer")
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("editing needs a fast (Rust) tokenizer: targets are located by "
                        "character offsets")
    text, boundary = join_prompt_target(prompt, target)
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    special = set(tokenizer.all_special_ids)
    labels = []
    for tok, (start, end) in zip(ids, offsets):
        is_target = end > boundary and not (tok in special and start == end)
        labels.append(tok if is_target else IGNORE_INDEX)
    # Drop a trailing special token (EOS) that some tokenizers append: it is not the target.
    while ids and labels[-1] == IGNORE_INDEX and ids[-1] in special:
        ids.pop()
        labels.pop()
    n_target = sum(label != IGNORE_INDEX for label in labels)
    if n_target == 0:
        raise EditInputError("the target produced no tokens")
    if end_with_eos and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
        offsets.append((len(text), len(text)))
        n_target += 1
    if len(ids) > max_length:
        # Protected head: a BOS and every token inside the kept prefix.
        lead = 0
        while lead < len(ids) and labels[lead] == IGNORE_INDEX and (
                (ids[lead] in special and offsets[lead][0] == offsets[lead][1])
                or offsets[lead][1] <= keep_prefix):
            lead += 1
        n_prompt = len(ids) - n_target - lead
        cut = len(ids) - max_length
        if cut >= n_prompt:
            raise EditInputError(
                f"the input is {len(ids)} tokens (target {n_target}); at most {max_length} "
                "fit, and the instruction and target must stay whole with some prompt left")
        ids = ids[:lead] + ids[lead + cut:]
        labels = labels[:lead] + labels[lead + cut:]
    return ids, labels


def encode_batch(tokenizer: PreTrainedTokenizerBase, prompts: list[str], targets: list[str],
                 max_length: int, keep_prefixes: list[int] | None = None,
                 end_with_eos: list[bool] | None = None) -> EncodedBatch:
    """Right-padded batch; padding is masked out of attention and of the labels."""
    keep = keep_prefixes or [0] * len(prompts)
    eos = end_with_eos or [False] * len(prompts)
    pairs = [encode_pair(tokenizer, p, t, max_length, k, e)
             for p, t, k, e in zip(prompts, targets, keep, eos)]
    width = max(len(ids) for ids, _ in pairs)
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    input_ids = torch.full((len(pairs), width), pad, dtype=torch.long)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, labs) in enumerate(pairs):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        labels[row, : len(labs)] = torch.tensor(labs)
    return EncodedBatch(input_ids, attention, labels)


def target_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row mean NLL of the label tokens ([B]); logits at t predict the token at t + 1."""
    return label_nll(logits[:, :-1], labels[:, 1:])


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """The positions t (shared by the batch) whose logits predict a label at t + 1: all a
    loss needs, so a model asked for logits there only (``logits_to_keep``) skips the
    output layer everywhere else — most of an edit's cost with a large vocabulary."""
    return (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(-1)


def label_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row mean NLL of ``targets`` ([B, T], IGNORE_INDEX skipped) under ``logits``
    ([B, T, V]) at the same positions."""
    mask = targets != IGNORE_INDEX
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * mask).sum(1) / mask.sum(1).clamp(min=1)


@dataclass(frozen=True)
class PaddedPrompts:
    """Prompts alone, right-padded: what a pass that reads each prompt's last position
    takes (routing keys, locality probes)."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T], 0 on padding
    last: torch.Tensor  # [B]: each prompt's last position


def pad_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                device: torch.device | str = "cpu", max_length: int | None = None
                ) -> PaddedPrompts:
    """``prompts`` tokenised (each kept to its last ``max_length`` tokens when given) and
    right-padded on ``device``. Under causal attention the padding never changes a real
    position's output."""
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    if max_length is not None:
        encoded = [e[-max_length:] for e in encoded]
    width = max(len(e) for e in encoded)
    pad = tokenizer.pad_token_id or 0
    ids = torch.tensor([e + [pad] * (width - len(e)) for e in encoded], device=device)
    mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in encoded],
                        device=device)
    last = torch.tensor([len(e) - 1 for e in encoded], device=device)
    return PaddedPrompts(ids, mask, last)
