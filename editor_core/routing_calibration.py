"""Calibrating the edit memory's routing for a base model, on training or validation data.

Two things are fitted, never on a stream that is later measured:

- the **background mean** of the gate input, over every token of the given background
  prompts: subtracted before each cosine, because raw activations share a large common
  direction that makes unrelated prompts look alike;
- the **threshold**: an edit's key (its prompt's last token) against, as positives, the
  last token of the record's rephrases (what must fire), and as negatives every position of
  its locality prompts about the same subject (what must not). The threshold maximises
  the positives that fire minus ``false_fire_weight`` times the negatives that do. The
  stricter threshold for edits without a subject is set where the negatives of *other*
  subjects would fire at most ``subjectless_false_rate`` of the time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .data.records import EditCase
from .editor import Editor
from .memory import RoutingConfig, routing_keys


@torch.no_grad()
def _gate_inputs(editor: Editor, prompts: Sequence[str]) -> list[torch.Tensor]:
    """The gate module's input at every token of each prompt ([tokens, d] each)."""
    module = dict(editor.edit_model.named_modules())[editor.gate]
    found: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda m, a: found.append(a[0][0].float()))
    try:
        device = next(editor.edit_model.parameters()).device
        for prompt in prompts:
            ids = torch.tensor([editor.tokenizer(prompt)["input_ids"]], device=device)
            editor.edit_model.base_model(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    return [f.cpu() for f in found]


def _unit(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    x = x - mean
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def calibrate_routing(editor: Editor, background: Sequence[str],
                      records: Sequence[EditCase], *, false_fire_weight: float = 4.0,
                      subjectless_false_rate: float = 0.001) -> tuple[RoutingConfig, dict]:
    """The routing for ``editor``'s model, and the figures it was chosen on."""
    mean = torch.cat(_gate_inputs(editor, background)).mean(0)
    pos, neg, other = [], [], []
    for record in records:
        locality = [p.prompt for probes in record.locality.values() for p in probes
                    if record.subject in p.prompt]
        if not record.rephrases:
            continue
        keys = _unit(routing_keys(editor.edit_model, editor.tokenizer, editor.gate,
                                  [record.prompt, *record.rephrases]), mean)
        pos += (keys[1:] @ keys[0]).tolist()
        for states in _gate_inputs(editor, locality):
            neg.append(float((_unit(states, mean) @ keys[0]).max()))
        other.append(keys[0])
    grid = [round(0.5 + 0.01 * i, 2) for i in range(50)]
    p, n = torch.tensor(pos), torch.tensor(neg or [-1.0])

    def gain(t: float) -> float:
        return float((p >= t).float().mean() - false_fire_weight * (n >= t).float().mean())

    threshold = max(grid, key=lambda t: (gain(t), -t))
    keys = torch.stack(other)
    cross = keys @ keys.T
    cross = cross[~torch.eye(len(keys), dtype=torch.bool)]
    strict = next((t for t in grid + [0.999]
                   if float((cross >= t).float().mean()) <= subjectless_false_rate), 0.999)
    figures = {"threshold": threshold, "subjectless_threshold": strict,
               "positives": len(pos), "negatives": len(neg),
               "positive_fire_rate": float((p >= threshold).float().mean()),
               "negative_fire_rate": float((n >= threshold).float().mean()),
               "cross_subject_fire_rate_strict": float((cross >= strict).float().mean())}
    return RoutingConfig(editor.gate, threshold, max(strict, threshold), mean), figures
