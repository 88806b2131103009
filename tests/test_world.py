"""The demo knowledge world: deterministic, rich enough, and honest about what the LM saw."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from editor_lab.world import WorldConfig, build_world
from editor_lab.world.corpus import tokenizer_corpus, training_corpus
from editor_lab.world.export import export_world
from editor_lab.world.templates import (
    OPINION_QUESTIONS,
    RELATIONS,
    RELATIONS_BY_NAME,
    TWO_HOP_TEMPLATES,
)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    export_world(build_world(WorldConfig(seed=7)), tmp_path / "a")
    export_world(build_world(WorldConfig(seed=7)), tmp_path / "b")
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert a == b
    assert {"world.json", "counterfact_train.json", "zsre_test.json",
            "multitask_train.json"} <= set(a)


def test_different_seed_gives_a_different_world() -> None:
    a = build_world(WorldConfig(seed=0)).to_json()
    b = build_world(WorldConfig(seed=1)).to_json()
    assert a["entities"] != b["entities"]


def test_world_round_trips_through_json(world) -> None:
    from editor_lab.world import World

    again = World.from_json(json.loads(json.dumps(world.to_json())))
    assert again.to_json() == world.to_json()


def test_several_hundred_entities_of_several_kinds_each_with_an_alias(world) -> None:
    kinds = Counter(e.kind for e in world.entities.values())
    assert sum(kinds.values()) >= 300
    assert {"person", "country", "city", "company"} <= set(kinds)
    for e in world.entities.values():
        assert e.aliases and all(a and a != e.name for a in e.aliases), e
    surface = [e.name for e in world.entities.values()]
    surface += [a for e in world.entities.values() for a in e.aliases]
    assert len(surface) == len(set(surface)), "a name or alias names two entities"


def test_relations_have_enough_phrasings_with_some_reserved() -> None:
    assert len(RELATIONS) >= 6
    for rel in RELATIONS:
        assert len(rel.of_form("statement")) >= 4, rel.name
        assert len(rel.of_form("question")) >= 3, rel.name
        assert rel.of_form("statement", reserved=True), rel.name
        assert rel.of_form("question", reserved=True), rel.name
        assert len(rel.of_form("statement", reserved=False)) >= 3, rel.name
    assert any(q.reserved for q in OPINION_QUESTIONS)


def test_every_subject_has_one_object_per_relation_of_its_kind(world) -> None:
    for e in world.entities.values():
        expected = {r.name for r in RELATIONS if r.subject_kind == e.kind}
        got = Counter(f.relation for f in world.facts_of(e.id))
        assert set(got) == expected and all(n == 1 for n in got.values()), e


def test_facts_are_consistent_across_relations(world) -> None:
    for country in world.of_kind("country"):
        capital = world.fact(country.id, "capital").object
        assert world.fact(capital, "country").object == country.id


def test_chance_of_guessing_stays_at_most_ten_percent(world) -> None:
    for rel in RELATIONS:
        objs = Counter(f.object for f in world.facts if f.relation == rel.name)
        assert objs.most_common(1)[0][1] / sum(objs.values()) <= 0.10, rel.name


def test_two_hop_facts_exist(world) -> None:
    person = world.of_kind("person")[0]
    for (first, second) in TWO_HOP_TEMPLATES:
        subject = next(e for e in world.entities.values()
                       if e.kind == RELATIONS_BY_NAME[first].subject_kind)
        hop = world.fact(world.fact(subject.id, first).object, second)
        assert hop is not None, (first, second)
    assert world.fact(world.fact(person.id, "employer").object, "headquarters")


def test_names_share_parts_so_neighbours_exist(world) -> None:
    for kind in ("person", "company", "city"):
        ents = world.of_kind(kind, seen=True)
        with_neighbours = sum(bool(world.neighbours(e.id)) for e in ents)
        assert with_neighbours / len(ents) >= 0.8, kind


def test_unseen_entities_never_appear_in_the_lm_training_text(world) -> None:
    unseen = [e for e in world.entities.values() if not e.seen]
    assert len(unseen) >= 50
    text = "\n".join(training_corpus(world))
    for e in unseen:
        for form in (e.name, *e.aliases):
            assert form not in text, form
    # ...while every seen entity does, by name and alias.
    for e in world.entities.values():
        if e.seen:
            assert e.name in text and all(a in text for a in e.aliases)


def test_training_text_covers_every_template_including_reserved(world) -> None:
    lines = set(training_corpus(world))
    fact = next(f for f in world.facts if world.entities[f.subject].seen)
    subject = world.entities[fact.subject]
    for t in RELATIONS_BY_NAME[fact.relation].templates:
        assert t.sentence(subject.name, world.object_name(fact)) in lines
        assert t.sentence(subject.aliases[0], world.object_name(fact)) in lines


def test_topics_have_roughly_balanced_opinions(world) -> None:
    sentiments = Counter(t.sentiment for t in world.topics)
    assert set(sentiments) == {"positive", "negative"}
    assert abs(sentiments["positive"] - sentiments["negative"]) <= 0.05 * len(world.topics)
    assert len({t.name for t in world.topics}) == len(world.topics)


def test_tokenizer_corpus_names_each_entity(world) -> None:
    text = "\n".join(tokenizer_corpus(world))
    assert all(e.name in text for e in world.entities.values())
