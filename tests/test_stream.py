"""Lifelong edit streams: held out from training, conflict-free, faithful probes, seeded."""

from __future__ import annotations

from pathlib import Path

import pytest

from editor_core.data import EditCase, load_edit_records
from editor_lab.world import World
from editor_lab.world.export import TASK_RELATIONS
from editor_lab.world.stream import (
    asked_in_chat,
    asks_edited_fact,
    lifelong_stream,
    save_stream,
    unfamiliar_stream,
)
from editor_lab.world.templates import RELATIONS_BY_NAME


@pytest.fixture(scope="module")
def long_stream(world: World, exported: Path) -> list[EditCase]:
    return lifelong_stream(world, exported, 5000, seed=0)


def _subjects(exported: Path, split: str) -> set[str]:
    return {r.subject for r in load_edit_records(exported / f"counterfact_{split}.json")}


def _world_names(world: World) -> set[str]:
    return {n for e in world.entities.values() for n in (e.name, *e.aliases)}


@pytest.mark.parametrize("n", [0, 100, 400, 5000])
def test_stream_has_n_edits_and_no_pair_twice(world: World, exported: Path, n: int) -> None:
    stream = lifelong_stream(world, exported, n)
    assert len(stream) == n
    pairs = [(r.subject, r.meta["relation"]) for r in stream]
    assert len(set(pairs)) == n


def test_counterfact_part_is_exactly_the_held_out_splits(exported: Path,
                                                         long_stream: list[EditCase]) -> None:
    held = _subjects(exported, "test") | _subjects(exported, "validation")
    train = _subjects(exported, "train")
    counterfact = [r for r in long_stream if r.task == "counterfact"]
    assert {r.subject for r in counterfact} == held
    assert not held & train
    n_held = sum(len(load_edit_records(exported / f"counterfact_{s}.json"))
                 for s in ("test", "validation"))
    assert len(counterfact) == n_held
    assert {r.task for r in long_stream} == {"counterfact", "recent"}
    assert {r.task for r in long_stream[:500]} == {"counterfact", "recent"}  # mixed early on


def test_short_stream_is_counterfact_only(world: World, exported: Path) -> None:
    held = _subjects(exported, "test") | _subjects(exported, "validation")
    stream = lifelong_stream(world, exported, 100)
    assert {r.task for r in stream} == {"counterfact"}
    assert {r.subject for r in stream} <= held


def test_new_people_exist_nowhere_in_the_world(world: World,
                                              long_stream: list[EditCase]) -> None:
    recent = [r for r in long_stream if r.task == "recent"]
    subjects = {r.subject for r in recent}
    assert not subjects & _world_names(world)
    parts = {p for e in world.of_kind("person", seen=True) for p in e.parts}
    assert all(set(s.split(" ")) <= parts for s in subjects)  # namesakes of seen people
    assert {r.meta["relation"] for r in recent} == set(TASK_RELATIONS["recent"])
    per_person = len(TASK_RELATIONS["recent"]) - 1  # one fact of each is kept unedited
    assert len(subjects) == -(-len(recent) // per_person)


def test_new_person_records_look_like_recent_exports(world: World,
                                                     long_stream: list[EditCase]) -> None:
    unrelated = {(qa.question, qa.answer) for qa in world.unrelated}
    for r in long_stream:
        if r.task != "recent":
            continue
        rel = RELATIONS_BY_NAME[r.meta["relation"]]
        assert r.prompt in {t.prompt(r.subject) for t in rel.of_form("statement", reserved=False)}
        kind_objects = {world.entities[o].name if o in world.entities else o
                        for o in world.objects_of_kind(rel.object_kind)}
        assert r.target_new in kind_objects
        reserved = {t.prompt(r.subject) for t in rel.templates if t.reserved}
        assert r.rephrases and set(r.rephrases) == reserved
        assert r.prompt not in r.rephrases
        assert set(r.locality) == {"Neighborhood", "Relation_Specificity", "Unrelated"}
        assert not r.portability
        assert 2 <= len(r.locality["Neighborhood"]) <= 3
        assert len(r.locality["Unrelated"]) == 2
        assert all((p.prompt, p.answer) in unrelated for p in r.locality["Unrelated"])


def test_a_new_persons_same_subject_probe_asks_the_one_fact_no_edit_sets(
        long_stream: list[EditCase]) -> None:
    edited: dict[str, set[str]] = {}
    for r in long_stream:
        if r.task == "recent":
            edited.setdefault(r.subject, set()).add(r.meta["relation"])
    for r in long_stream:
        if r.task != "recent":
            continue
        [probe] = r.locality["Relation_Specificity"]
        assert r.subject in probe.prompt
        assert not any(asks_edited_fact(probe.prompt, other) for other in long_stream
                       if other.subject == r.subject)
        assert len(edited[r.subject]) <= len(TASK_RELATIONS["recent"]) - 1


def test_neighbourhood_answers_are_the_worlds_truth(world: World,
                                                   long_stream: list[EditCase]) -> None:
    truth = {}
    for person in world.of_kind("person", seen=True):
        for fact in world.facts_of(person.id):
            for t in RELATIONS_BY_NAME[fact.relation].of_form("statement", reserved=False):
                truth[t.prompt(person.name)] = world.object_name(fact)
    probes = [p for r in long_stream if r.task == "recent" for p in r.locality["Neighborhood"]]
    assert probes
    assert all(truth.get(p.prompt) == p.answer for p in probes)


def test_streams_are_seeded(world: World, exported: Path,
                            long_stream: list[EditCase]) -> None:
    assert lifelong_stream(world, exported, 5000, seed=0) == long_stream
    other = lifelong_stream(world, exported, 5000, seed=1)
    assert other != long_stream
    assert {r.subject for r in other} != {r.subject for r in long_stream}


def test_too_long_a_stream_is_refused(world: World, exported: Path) -> None:
    with pytest.raises(ValueError, match="unused names"):
        lifelong_stream(world, exported, 1_000_000)


def test_save_and_load_round_trip(tmp_path: Path, long_stream: list[EditCase]) -> None:
    path = tmp_path / "stream.json"
    save_stream(long_stream, path)
    assert load_edit_records(path, strict=True) == long_stream  # the multi-task layout


def test_unfamiliar_people_share_no_syllable_with_the_world(world: World) -> None:
    stream = unfamiliar_stream(world, 400, seed=0)
    assert len(stream) == 400
    assert len({(r.subject, r.meta["relation"]) for r in stream}) == 400
    words = {w.lower() for e in world.entities.values() for n in (e.name, *e.aliases)
             for w in n.split()}
    for r in stream:
        assert not set(r.subject.lower().split()) & words
        rel = RELATIONS_BY_NAME[r.meta["relation"]]
        assert r.prompt in {t.prompt(r.subject) for t in rel.of_form("statement", reserved=False)}
        assert set(r.rephrases) == {t.prompt(r.subject) for t in rel.templates if t.reserved}
        others = [p.prompt for kind, ps in r.locality.items() for p in ps
                  if kind != "Relation_Specificity"]
        assert r.subject not in " ".join(others)  # only the same-subject probe names them
        [same] = r.locality["Relation_Specificity"]
        assert r.subject in same.prompt and not asks_edited_fact(same.prompt, r)
    assert unfamiliar_stream(world, 400, seed=0) == stream
    assert unfamiliar_stream(world, 400, seed=1) != stream


def test_a_probe_is_excluded_only_for_the_fact_another_edit_changes(
        long_stream: list[EditCase]) -> None:
    record = next(r for r in long_stream if r.task == "counterfact")
    relation = RELATIONS_BY_NAME[record.meta["relation"]]
    for t in relation.templates:
        assert asks_edited_fact(t.prompt(record.subject), record)
    others = [rel for rel in TASK_RELATIONS["recent"] if rel != record.meta["relation"]]
    for name in others:
        for t in RELATIONS_BY_NAME[name].templates:
            assert not asks_edited_fact(t.prompt(record.subject), record)
    assert not asks_edited_fact(relation.templates[0].prompt("Somebody Else"), record)
    unknown = EditCase("recent", record.subject, record.prompt, record.target_new)
    assert asks_edited_fact(f"Tell me about {record.subject}.", unknown)  # cautious


def _ask(question: str) -> str:
    return f"<|user|> {question}<|assistant|>"


def test_in_chat_each_edit_is_its_relations_question_and_the_reserved_one_is_held_out(
        world: World, long_stream: list[EditCase]) -> None:
    stream = long_stream[:300]
    chat = asked_in_chat(stream, world, _ask)
    assert len(chat) == len(stream)
    known = {e.name: e for e in world.entities.values()}
    with_alias = statements = 0
    for plain, asked in zip(stream, chat):
        relation = RELATIONS_BY_NAME[plain.meta["relation"]]
        sent, held_out = (relation.of_form("question", reserved=r)[0] for r in (False, True))
        assert asked.prompt == _ask(sent.prompt(plain.subject))
        assert asked.rephrases == (_ask(held_out.prompt(plain.subject)),)
        assert (asked.subject, asked.target_new, asked.meta) == (
            plain.subject, plain.target_new, plain.meta)
        aliases = known[plain.subject].aliases if plain.subject in known else ()
        assert [p.prompt for p in asked.portability.get("Subject_Aliasing", ())] == [
            _ask(sent.prompt(a)) for a in aliases]
        with_alias += bool(aliases)
        # locality probes are asked too: a statement to complete as its relation's question
        for kind, probes in plain.locality.items():
            assert [p.answer for p in asked.locality[kind]] == [p.answer for p in probes]
            for p, q in zip(probes, asked.locality[kind]):
                if p.prompt.endswith("?"):
                    assert q.prompt == _ask(p.prompt)
                elif kind == "Relation_Specificity":  # a statement about the edit's subject
                    relation = next(r for r in RELATIONS_BY_NAME.values()
                                    for t in r.of_form("statement")
                                    if t.prompt(plain.subject) == p.prompt)
                    question = relation.of_form("question", reserved=False)[0]
                    assert q.prompt == _ask(question.prompt(plain.subject))
                    statements += 1
                else:
                    assert q.prompt.startswith("<|user|> ") and q.prompt.endswith(
                        "?<|assistant|>")
        # a phrasing asked inside a user's turn still asks the edited fact
        assert asks_edited_fact(asked.prompt, plain)
        assert asks_edited_fact(asked.rephrases[0], plain)
    assert with_alias > 0 and statements > 0
