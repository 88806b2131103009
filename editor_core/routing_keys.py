"""Routing keys: what the editor records about an edit so the edit memory can route it.

A routing key is the gate module's input at the last token of a prompt, taken on a model
no memory routes (the editor's pristine copy), plus the token sequences its subject may
appear as. The memory compares these keys with live gate inputs (``routing``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
from torch import nn

from .encoding import pad_prompts

__all__ = ["routing_keys", "subject_token_ids"]


def routing_keys(model: nn.Module, tokenizer, gate: str, prompts: Sequence[str]
                 ) -> torch.Tensor:
    """The gate module's input at each prompt's last token ([len(prompts), d]), in one
    right-padded pass that stops at the gate; the caller passes a model no memory routes."""
    device = next(model.parameters()).device
    batch = pad_prompts(tokenizer, prompts, device)
    module = dict(model.named_modules())[gate]
    found: list[torch.Tensor] = []
    owner = threading.get_ident()  # the editing pass may run beside, in another thread

    def hook(m, args):
        if threading.get_ident() == owner:
            found.append(args[0].detach())
            raise _GateReached  # the layers above the gate are not needed

    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            getattr(model, "base_model", model)(input_ids=batch.input_ids,
                                                attention_mask=batch.attention_mask,
                                                use_cache=False)
    except _GateReached:
        pass
    finally:
        handle.remove()
    rows = torch.arange(len(prompts), device=device)
    return found[0][rows, batch.last].float().cpu()


class _GateReached(Exception):
    """Ends a keys-only forward pass at the gate (nothing after it is computed)."""


def subject_token_ids(tokenizer, names: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """The token sequences a subject (or alias) may appear as: alone and after a space."""
    out: list[tuple[int, ...]] = []
    for name in names:
        name = name.strip()
        if not name:
            continue
        for text in (name, " " + name):
            ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
            if ids and ids not in out:
                out.append(ids)
    return tuple(out)
