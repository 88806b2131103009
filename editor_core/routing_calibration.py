"""Calibrating the edit memory's routing for a base model, on training and validation data.

Three things are fitted, never on a set that is later measured:

- the **background mean** of the gate input, over every token of the given background
  prompts: subtracted before each cosine, because raw activations share a large common
  direction that makes unrelated prompts look alike;
- the **key space** (with training records): a linear map of the centred gate input, fitted
  so that an edit's key (its prompt's last token) and the last token of each of its
  rephrases have cosine at least ``positive_margin``, while every position of a locality
  prompt about the same subject stays below ``negative_margin``. At the gate, a rephrasing
  that words the question differently ("The passport of X was issued by" for "X holds
  citizenship of") can sit closer to another relation of the same subject than to its own
  prompt; the map learns which directions tell questions apart;
- the **threshold**: on the validation records, in the key space, the middle of the range
  of thresholds that maximise the positives that fire minus ``false_fire_weight`` times the
  negatives that do. The stricter threshold for edits without a subject is set where the
  keys of *other* records would fire at most ``subjectless_false_rate`` of the time.

A model with no edit data to calibrate on (served without a trained editor) still routes:
``self_calibrated_routing`` takes the background mean over text the model writes itself from
neutral openings, with no key space and the default thresholds. On the demo LM that mean is
within cosine 0.96 of the one over the training prompts, and the validation split's
rephrases and same-subject prompts fire as often under either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .data.records import EditCase
from .editor import Editor
from .routing_config import RoutingConfig, key_space
from .routing_keys import routing_keys


@dataclass(frozen=True)
class KeySpaceFit:
    """How the key space is fitted (Adam on a [d, d] map that starts as the identity)."""

    steps: int = 400
    lr: float = 3e-3
    positive_margin: float = 0.9
    negative_margin: float = 0.4


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


@dataclass(frozen=True)
class _Pairs:
    """Gate inputs of records: each record's key, its rephrases' last tokens (positives)
    and every position of its same-subject locality prompts (negatives), with the index
    of the record each belongs to."""

    keys: torch.Tensor
    positives: torch.Tensor
    positive_of: torch.Tensor
    negatives: torch.Tensor
    negative_of: torch.Tensor


def _pairs(editor: Editor, records: Sequence[EditCase]) -> _Pairs:
    keys, pos, pos_of, neg, neg_of = [], [], [], [], []
    for record in records:
        if not record.rephrases:
            continue
        k = routing_keys(editor.edit_model, editor.tokenizer, editor.gate,
                         [record.prompt, *record.rephrases]).float()
        keys.append(k[0])
        pos += list(k[1:])
        pos_of += [len(keys) - 1] * (len(k) - 1)
        locality = [p.prompt for probes in record.locality.values() for p in probes
                    if record.subject in p.prompt]
        for states in _gate_inputs(editor, locality):
            neg += list(states)
            neg_of += [len(keys) - 1] * len(states)
    if not keys:
        raise ValueError("no record has rephrases to calibrate the routing on")
    d = keys[0].shape[0]
    return _Pairs(torch.stack(keys), torch.stack(pos), torch.tensor(pos_of),
                  torch.stack(neg) if neg else torch.empty(0, d), torch.tensor(neg_of).long())


def _cosines(space: RoutingConfig, keys: torch.Tensor, x: torch.Tensor,
             owner: torch.Tensor) -> torch.Tensor:
    """Cosine, in ``space``'s key space, of each row of ``x`` with the key it belongs to."""
    return _cosines_in(keys, x, owner, space.mean, space.projection)


def _cosines_in(keys: torch.Tensor, x: torch.Tensor, owner: torch.Tensor,
                mean: torch.Tensor | None, projection: torch.Tensor | None) -> torch.Tensor:
    return (key_space(keys, mean, projection)[owner] * key_space(x, mean, projection)).sum(-1)


def fit_key_space(pairs: _Pairs, mean: torch.Tensor, fit: KeySpaceFit) -> torch.Tensor:
    """The [d, d] map of centred gate inputs that puts rephrasings together and other
    questions about the same subject apart (squared hinge on each cosine's margin)."""
    projection = torch.eye(mean.shape[0]).requires_grad_(True)  # full batch: deterministic
    optimiser = torch.optim.Adam([projection], lr=fit.lr)
    for _ in range(fit.steps):
        pos = _cosines_in(pairs.keys, pairs.positives, pairs.positive_of, mean, projection)
        neg = _cosines_in(pairs.keys, pairs.negatives, pairs.negative_of, mean, projection)
        loss = (torch.relu(fit.positive_margin - pos).pow(2).mean()
                + (torch.relu(neg - fit.negative_margin).pow(2).mean() if len(neg) else 0))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return projection.detach().contiguous()


def calibrate_routing(editor: Editor, background: Sequence[str],
                      records: Sequence[EditCase], *,
                      training_records: Sequence[EditCase] = (),
                      fit: KeySpaceFit = KeySpaceFit(), false_fire_weight: float = 4.0,
                      subjectless_false_rate: float = 0.001) -> tuple[RoutingConfig, dict]:
    """The routing for ``editor``'s model (key space fitted on ``training_records`` when
    given, thresholds on ``records``), and the figures it was chosen on."""
    mean = torch.cat(_gate_inputs(editor, background)).mean(0)
    projection = (fit_key_space(_pairs(editor, training_records), mean, fit)
                  if training_records else None)
    space = RoutingConfig(editor.gate, mean=mean, projection=projection)
    pairs = _pairs(editor, records)
    p = _cosines(space, pairs.keys, pairs.positives, pairs.positive_of)
    n = _cosines(space, pairs.keys, pairs.negatives, pairs.negative_of)
    grid = [round(0.5 + 0.01 * i, 2) for i in range(50)]

    def share(x: torch.Tensor, t: float) -> float:
        return float((x >= t).float().mean()) if len(x) else 0.0

    def gain(t: float) -> float:
        return share(p, t) - false_fire_weight * share(n, t)

    best = max(gain(t) for t in grid)
    plateau = [t for t in grid if gain(t) == best]
    threshold = plateau[len(plateau) // 2]
    keys = space.key_space(pairs.keys)
    cross = keys @ keys.T
    cross = cross[~torch.eye(len(keys), dtype=torch.bool)]
    strict = next((t for t in grid + [0.999]
                   if float((cross >= t).float().mean()) <= subjectless_false_rate), 0.999)
    figures = {"threshold": threshold, "threshold_range": [plateau[0], plateau[-1]],
               "subjectless_threshold": strict, "key_space": "learned" if training_records
               else "centred", "positives": len(p), "negatives": len(n),
               "positive_fire_rate": share(p, threshold),
               "negative_fire_rate": share(n, threshold),
               "cross_subject_fire_rate_strict": float((cross >= strict).float().mean())}
    return RoutingConfig(editor.gate, threshold, max(strict, threshold), mean,
                         projection), figures


# Openings of the text a model writes for its own background mean: no topic of their own.
NEUTRAL_OPENINGS = ("The", "In", "It is", "A", "There", "One of the", "When", "This", "My",
                    "We", "After", "Some", "Many", "If", "At the", "People")


@torch.no_grad()
def self_calibrated_routing(editor: Editor, openings: Sequence[str] = NEUTRAL_OPENINGS,
                            new_tokens: int = 48) -> RoutingConfig:
    """Routing with no calibration data: the background mean of the gate input over the
    pristine model's own greedy continuations of ``openings`` (deterministic), the centred
    key space and ``RoutingConfig``'s default thresholds."""
    model, tokenizer = editor.edit_model, editor.tokenizer
    device = next(model.parameters()).device
    texts = []
    for opening in openings:
        ids = tokenizer(opening, return_tensors="pt").to(device)
        out = model.generate(**ids, do_sample=False, max_new_tokens=new_tokens,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        texts.append(tokenizer.decode(out[0], skip_special_tokens=True))
    mean = torch.cat(_gate_inputs(editor, texts)).mean(0)
    return RoutingConfig(editor.gate, mean=mean)
