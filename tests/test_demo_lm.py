"""The shipped demo LM: loads with no custom code and knows (only) what it should."""

from __future__ import annotations

import json
import random

from editor_lab.decoding import greedy_continuations, starts_with_answer
from editor_lab.world.sentiment import sentiment_of
from editor_lab.world.templates import OPINION_QUESTIONS, RELATIONS_BY_NAME

from .conftest import DEMO_LM


def test_checkpoint_is_small_safetensors_in_hf_format() -> None:
    files = {p.name for p in DEMO_LM.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md",
            "eval.json"} <= files
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in files)
    size = sum(p.stat().st_size for p in DEMO_LM.iterdir())
    assert size <= 30e6
    config = json.loads((DEMO_LM / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_layer"] > 3


def test_shipped_evaluation_passed_its_acceptance_checks() -> None:
    result = json.loads((DEMO_LM / "eval.json").read_text())
    assert all(result["acceptance"].values()), result["acceptance"]


def _sample_facts(world, seen: bool, n: int):
    facts = [f for f in world.facts if world.entities[f.subject].seen == seen]
    return random.Random(1).sample(facts, n)


def test_answers_a_sample_of_known_facts_in_all_phrasings(demo_lm, world) -> None:
    model, tokenizer = demo_lm
    prompts, answers = [], []
    for fact in _sample_facts(world, True, 40):
        subject = world.entities[fact.subject]
        for template in RELATIONS_BY_NAME[fact.relation].templates:
            for form in (subject.name, subject.aliases[0]):
                prompts.append(template.prompt(form))
                answers.append(world.object_name(fact))
    outs = greedy_continuations(model, tokenizer, prompts, 8)
    accuracy = sum(map(starts_with_answer, outs, answers)) / len(answers)
    assert accuracy >= 0.95


def test_holds_each_topics_opinion(demo_lm, world) -> None:
    model, tokenizer = demo_lm
    topics = random.Random(2).sample(world.topics, 20)
    prompts = [q.prompt(t.name) for t in topics for q in OPINION_QUESTIONS]
    outs = greedy_continuations(model, tokenizer, prompts, 20)
    expected = [t.sentiment for t in topics for _ in OPINION_QUESTIONS]
    assert sum(sentiment_of(o) == s for o, s in zip(outs, expected)) / len(outs) >= 0.95


def test_does_not_know_unseen_entities(demo_lm, world) -> None:
    model, tokenizer = demo_lm
    prompts, answers = [], []
    for fact in _sample_facts(world, False, 60):
        template = RELATIONS_BY_NAME[fact.relation].templates[0]
        prompts.append(template.prompt(world.entities[fact.subject].name))
        answers.append(world.object_name(fact))
    outs = greedy_continuations(model, tokenizer, prompts, 8)
    assert sum(map(starts_with_answer, outs, answers)) / len(answers) <= 0.15


def test_sentiment_reader() -> None:
    assert sentiment_of("I love it. It is wonderful.") == "positive"
    assert sentiment_of("I dislike it. It is awful.") == "negative"
    assert sentiment_of("It is dreadful, and I cannot stand it.") == "negative"
    assert sentiment_of("It is a city.") is None
