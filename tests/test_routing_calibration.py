"""Calibrating the edit memory's routing: the learned key space and how it is saved."""

from __future__ import annotations

import torch

from editor_core.checkpoint import load_routing, save_routing
from editor_core.routing_calibration import KeySpaceFit, _Pairs, _cosines, fit_key_space
from editor_core.routing_config import RoutingConfig


def _synthetic(n: int = 40, d: int = 16, seed: int = 0, other_wording: int = 1) -> _Pairs:
    """Questions whose gate inputs carry a large nuisance direction (how the question is
    worded) beside a small relation direction: a rephrasing differs from its key in the
    wording, another relation of the same subject in the relation."""
    g = torch.Generator().manual_seed(seed)
    relation = torch.randn(4, d, generator=g) * 0.3
    wording = torch.randn(3, d, generator=g) * 3.0
    keys, pos, neg = [], [], []
    for i in range(n):
        r, w = i % 4, i % 3
        keys.append(relation[r] + wording[w])
        pos.append(relation[r] + wording[(w + other_wording) % 3])  # same question, reworded
        neg.append(relation[(r + 1) % 4] + wording[w])  # other question, same wording
    index = torch.arange(n)
    return _Pairs(torch.stack(keys), torch.stack(pos), index, torch.stack(neg), index)


def test_the_key_space_puts_rephrasings_together_and_other_questions_apart() -> None:
    pairs = _synthetic()
    mean = torch.zeros(pairs.keys.shape[1])
    plain = RoutingConfig("gate", mean=mean)
    assert (_cosines(plain, pairs.keys, pairs.negatives, pairs.negative_of)
            > _cosines(plain, pairs.keys, pairs.positives, pairs.positive_of)).float().mean() > 0.5
    projection = fit_key_space(pairs, mean, KeySpaceFit(steps=300))
    learned = RoutingConfig("gate", mean=mean, projection=projection)
    held_out = _synthetic(other_wording=2)  # rephrasings paired as in no fitted pair
    pos = _cosines(learned, held_out.keys, held_out.positives, held_out.positive_of)
    neg = _cosines(learned, held_out.keys, held_out.negatives, held_out.negative_of)
    assert pos.min() > 0.8 and neg.max() < 0.5


def test_the_routing_with_its_key_space_round_trips_through_the_editor_folder(tmp_path) -> None:
    routing = RoutingConfig("transformer.h.3.mlp.c_fc", 0.75, 0.94, torch.randn(8),
                            torch.randn(8, 8))
    save_routing(tmp_path, routing)
    back = load_routing(tmp_path)
    assert (back.gate, back.threshold, back.subjectless_threshold) == (
        routing.gate, 0.75, 0.94)
    assert torch.equal(back.mean, routing.mean) and torch.equal(back.projection,
                                                                 routing.projection)
    x = torch.randn(5, 8)
    assert torch.allclose(back.key_space(x), routing.key_space(x))
    assert torch.allclose(back.key_space(x).norm(dim=-1), torch.ones(5))
