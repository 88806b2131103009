"""Evaluation metrics on the demo LM: what it knows scores 1, what it does not scores 0."""

from __future__ import annotations

import pytest
import torch

from editor_core.data.records import Probe
from editor_lab.evaluation.metrics import (
    answer_argmax,
    exact_match,
    token_accuracy,
    unchanged_share,
)


@pytest.fixture(scope="module")
def probes(world):
    person = world.of_kind("person", seen=True)[0]
    fact = world.fact(person.id, "citizenship")
    truth = world.object_name(fact)
    wrong = next(c.name for c in world.of_kind("country") if c.name != truth)
    prompt = f"{person.name} is a citizen of"
    return Probe(prompt, truth), Probe(prompt, wrong)


def test_token_accuracy_and_exact_match_separate_truth_from_falsehood(demo_lm, probes) -> None:
    model, tok = demo_lm
    right, wrong = probes
    acc = token_accuracy(model, tok, [right, wrong])
    assert acc[0] == 1.0 and acc[1] < 1.0
    assert token_accuracy(model, tok, [wrong]) == acc[1:]  # batching does not change it
    assert exact_match(model, tok, [right, wrong]) == [1.0, 0.0]
    assert exact_match(model, tok, []) == []


def test_locality_compares_argmax_before_and_after(demo_lm, probes) -> None:
    model, tok = demo_lm
    right, _ = probes
    before = answer_argmax(model, tok, [right])
    assert unchanged_share(before, answer_argmax(model, tok, [right])) == [1.0]
    changed = [before[0].clone()]
    changed[0][0] += 1
    share = unchanged_share(before, changed)[0]
    assert share == pytest.approx(1 - 1 / len(before[0]))
    assert isinstance(before[0], torch.Tensor) and len(before[0]) >= 1
