"""Batched greedy decoding of short continuations, used by every evaluator."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@torch.no_grad()
def greedy_continuations(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                         prompts: Sequence[str], max_new_tokens: int,
                         batch_size: int = 256, desc: str | None = None) -> list[str]:
    """Greedy continuation text of each prompt (prompt excluded), decoded in batches.

    With ``desc``, a progress bar of that name shows the batches.

    Prompts are left-padded so every row's last real token sits at the same position; the
    attention mask keeps padding out, and ``generate`` derives positions from it.
    """
    device = next(model.parameters()).device
    out: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for i in tqdm(starts, desc=desc, unit="batch", disable=desc is None, leave=False):
        chunk = list(prompts[i:i + batch_size])
        # Left padding per call: the shared tokenizer is not mutated (thread-safe).
        enc = tokenizer(chunk, return_tensors="pt", padding=True,
                        padding_side="left").to(device)
        generated = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new = generated[:, enc["input_ids"].shape[1]:]
        out += tokenizer.batch_decode(new, skip_special_tokens=True)
    return out


def starts_with_answer(continuation: str, answer: str) -> bool:
    """True if the continuation begins with ``answer`` as a whole word or phrase."""
    text = continuation.lstrip()
    if not text.startswith(answer):
        return False
    rest = text[len(answer):]
    return not rest or not rest[0].isalnum()
