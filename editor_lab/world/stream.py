"""Long, conflict-free streams of held-out edits for lifelong-editing evaluation.

A lifelong run applies thousands of edits to one model, far more than the exported test
and validation splits hold. The stream starts from those CounterFact records (subjects the
editor never trained on) and tops them up with Recent-style edits about new fictitious
people: names composed from the world's own first names and surnames, so each new person
has seen namesakes (the neighbours locality is measured on), yet no full name the LM has
ever read. No (subject, relation) pair is edited twice, so no edit overwrites another and
every edit stays measurable at every checkpoint.

Streams are saved in the multi-task KnowEdit layout (a ``type`` field per record), which
``load_edit_records`` already reads without being told the task.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from editor_core.data.knowedit import load_edit_records
from editor_core.data.records import EditCase, Probe

from .export import MULTITASK_TYPE, TASK_RELATIONS
from .schema import Entity, World
from .templates import RELATIONS_BY_NAME, Relation

HELD_OUT_SPLITS: tuple[str, ...] = ("test", "validation")


def held_out_counterfact(exported_dir: Path) -> list[EditCase]:
    """The CounterFact records of the splits the editor is never trained on."""
    return [r for split in HELD_OUT_SPLITS
            for r in load_edit_records(exported_dir / f"counterfact_{split}.json",
                                       "counterfact", strict=True)]


def new_person_names(world: World, count: int, rng: random.Random,
                     taken: Collection[str] = ()) -> list[tuple[str, str]]:
    """``count`` fresh (first name, surname) pairs built from seen people's name parts.

    A pair is fresh when "first last" is no entity's name or alias, nor in ``taken``. Raises
    ValueError when fewer than ``count`` such pairs exist.
    """
    seen = world.of_kind("person", seen=True)
    firsts = sorted({p.parts[0] for p in seen})
    lasts = sorted({p.parts[1] for p in seen})
    used = set(taken)
    for e in world.entities.values():
        used.add(e.name)
        used.update(e.aliases)
    free = [(f, s) for f in firsts for s in lasts if f"{f} {s}" not in used]
    if count > len(free):
        raise ValueError(f"{count} new people asked for, but the world's {len(firsts)} first "
                         f"names and {len(lasts)} surnames compose only {len(free)} unused "
                         "names")
    return rng.sample(free, count)


def _new_person_record(world: World, subject: str, relation: str, kept: str,
                       neighbours_from: list[Entity], rng: random.Random) -> EditCase:
    """A Recent-style edit teaching a fact about a person the world does not contain. Its
    neighbour probes ask the same relation of people drawn from ``neighbours_from``; its
    same-subject probe asks the person's ``kept`` relation, which no edit sets."""
    rel = RELATIONS_BY_NAME[relation]
    statements = rel.of_form("statement", reserved=False)
    target = rng.choice(world.objects_of_kind(rel.object_kind))
    target_new = world.entities[target].name if target in world.entities else target
    reserved = rel.of_form("statement", reserved=True) + rel.of_form("question", reserved=True)
    neighbours = []
    for person in rng.sample(neighbours_from, min(3, len(neighbours_from))):
        fact = world.fact(person.id, relation)
        if fact is not None:
            neighbours.append(Probe(rng.choice(statements).prompt(person.name),
                                    world.object_name(fact)))
    unrelated = [Probe(qa.question, qa.answer) for qa in rng.sample(world.unrelated, 2)]
    # The person is new, so the kept relation has no true answer: an object of the right
    # kind stands in (only whether the model's answer changes is measured).
    other = RELATIONS_BY_NAME[kept]
    stand_in = rng.choice(world.objects_of_kind(other.object_kind))
    same_subject = Probe(rng.choice(other.of_form("statement", reserved=False)).prompt(subject),
                         world.entities[stand_in].name if stand_in in world.entities
                         else stand_in)
    return EditCase(
        task="recent",
        subject=subject,
        prompt=rng.choice(statements).prompt(subject),
        target_new=target_new,
        rephrases=tuple(t.prompt(subject) for t in reserved),
        locality={"Relation_Specificity": (same_subject,), "Neighborhood": tuple(neighbours),
                  "Unrelated": tuple(unrelated)},
        meta={"relation": relation},
    )


def _namesakes_of(name: tuple[str, str], namesakes: dict[str, list[Entity]]) -> list[Entity]:
    """Known people who share a part of ``name``, in a fixed order."""
    return sorted({p.id: p for part in name for p in namesakes[part]}.values(),
                  key=lambda p: p.id)


def lifelong_stream(world: World, exported_dir: Path, n: int, seed: int = 0
                    ) -> list[EditCase]:
    """``n`` held-out edits, no (subject, relation) pair twice, in a seeded mixed order.

    All test and validation CounterFact records come first in priority (a seeded sample of
    them when ``n`` is smaller); the rest are Recent-style edits about new people, each given
    all but one of the Recent relations, so one person carries several edits and keeps one
    fact unedited, which its records probe as same-subject locality (every held-out
    CounterFact subject has all its facts edited). The whole
    stream is then shuffled with ``seed``: any prefix, i.e. any checkpoint of a lifelong run,
    mixes both kinds. Same world, ``n`` and ``seed``, same stream.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    rng = random.Random(seed)
    held = held_out_counterfact(exported_dir)
    if n <= len(held):
        stream = rng.sample(held, n)
    else:
        relations = TASK_RELATIONS["recent"]
        per_person = len(relations) - 1
        missing = n - len(held)
        try:
            names = new_person_names(world, math.ceil(missing / per_person), rng,
                                     {r.subject for r in held})
        except ValueError as err:
            raise ValueError(f"a stream of {n} edits needs {missing} new-person edits "
                             f"beyond the {len(held)} held-out CounterFact records: {err}"
                             ) from None
        namesakes: dict[str, list[Entity]] = {}
        for p in world.of_kind("person", seen=True):
            for part in p.parts:
                namesakes.setdefault(part, []).append(p)
        edited = [(name, rng.sample(relations, len(relations))) for name in names]
        triples = [(name, rel, order[-1]) for name, order in edited
                   for rel in order[:per_person]][:missing]
        stream = held + [_new_person_record(world, " ".join(name), rel, kept,
                                            _namesakes_of(name, namesakes), rng)
                         for name, rel, kept in triples]
        rng.shuffle(stream)
    return stream


def _knowedit_json(record: EditCase) -> dict[str, Any]:
    """A CounterFact or Recent record in the multi-task KnowEdit layout; ``meta`` (the
    relation) goes top-level, where ``record_from_knowedit`` reads it back."""
    def probes(block: dict[str, tuple[Probe, ...]]) -> dict[str, list[dict[str, Any]]]:
        return {cat: [{"prompt": p.prompt, "ground_truth": [[p.answer]]} for p in ps]
                for cat, ps in block.items()}

    out: dict[str, Any] = {"type": MULTITASK_TYPE[record.task], "subject": record.subject,
                           "prompt": record.prompt, "target_new": record.target_new}
    if record.ground_truth is not None:
        out["ground_truth"] = record.ground_truth
    out["paraphrases"] = list(record.rephrases)
    out["locality"] = probes(record.locality)
    out["portability"] = probes(record.portability)
    return {**out, **record.meta}


def save_stream(records: list[EditCase], path: Path) -> None:
    """Write a stream as one JSON list, each record naming its task in ``type``."""
    data = [_knowedit_json(r) for r in records]
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


# Syllable parts the world's names never use (see ``names.py``): names built only from them
# share no syllable with anything the demo LM has read.
_UNFAMILIAR_ONSETS = ("q", "j", "w", "h", "c", "ch", "wh", "qu", "sk", "sn", "sw", "cl", "gl",
                      "fl", "sp")
_UNFAMILIAR_VOWELS = ("oo", "ui", "aa", "ie", "au", "oa", "eu")
_UNFAMILIAR_CODAS = ("", "ck", "ff", "pp", "gg", "w", "ct", "sh")


def unfamiliar_name(rng: random.Random, syllables: int) -> str:
    """A capitalised word of ``syllables`` syllables no name of the world shares one with."""
    return "".join(rng.choice(_UNFAMILIAR_ONSETS) + rng.choice(_UNFAMILIAR_VOWELS)
                   + rng.choice(_UNFAMILIAR_CODAS) for _ in range(syllables)).capitalize()


def unfamiliar_stream(world: World, n: int, seed: int = 0) -> list[EditCase]:
    """``n`` Recent-style insertions about new people whose names use only syllables the
    world never uses, each given all but one of the Recent relations (no (subject,
    relation) twice; the one kept unedited is the same-subject probe).

    Such a person has no namesakes, so the "neighbour" probes ask the same relation of
    random known people; the random probes are the world's unrelated questions.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    rng = random.Random(seed)
    relations = TASK_RELATIONS["recent"]
    people = world.of_kind("person", seen=True)
    names: list[str] = []
    while len(names) < math.ceil(n / (len(relations) - 1)):
        name = f"{unfamiliar_name(rng, rng.choice((2, 3)))} {unfamiliar_name(rng, 2)}"
        if name not in names:
            names.append(name)
    edited = [(name, rng.sample(relations, len(relations))) for name in names]
    stream = [_new_person_record(world, name, rel, order[-1], people, rng)
              for name, order in edited for rel in order[:-1]][:n]
    rng.shuffle(stream)
    return stream


def asks_edited_fact(prompt: str, record: EditCase) -> bool:
    """Whether ``prompt`` asks the (subject, relation) that ``record`` edits: one of the
    relation's phrasings filled with the record's subject. A record without a known relation
    counts for any prompt naming its subject (the cautious answer)."""
    if record.subject not in prompt:
        return False
    relation = RELATIONS_BY_NAME.get(record.meta.get("relation", ""))
    if relation is None:
        return True
    # a phrasing inside a chat user's turn asks it too
    return any(t.prompt(record.subject) in prompt for t in relation.templates)


def asked_in_chat(stream: list[EditCase], world: World, ask: Callable[[str], str]
                  ) -> list[EditCase]:
    """The stream as a chat user sends and asks it; ``ask`` writes a question as a user's
    turn (the model's chat template). Each edit is sent as its relation's first question in
    a user's turn; its held-out question is the relation's reserved question, never sent;
    its alias probes ask that first question of each alias; its locality probes are asked
    as user turns, a statement to complete ("The employer of X is") as its relation's
    question: a chat user asks, and the model's reply to a bare statement is no answer to
    keep (it goes on about whatever fact it likes, the edited one included)."""
    aliases = {e.name: e.aliases for e in world.entities.values()}
    out = []
    for record in stream:
        relation = RELATIONS_BY_NAME[record.meta["relation"]]
        sent = relation.of_form("question", reserved=False)[0]
        held_out = relation.of_form("question", reserved=True)[0]
        aliased = tuple(Probe(ask(sent.prompt(alias)), record.target_new)
                        for alias in aliases.get(record.subject, ()))
        out.append(dataclasses.replace(
            record, prompt=ask(sent.prompt(record.subject)),
            rephrases=(ask(held_out.prompt(record.subject)),),
            portability={**record.portability, "Subject_Aliasing": aliased} if aliased
            else {k: v for k, v in record.portability.items() if k != "Subject_Aliasing"},
            locality={kind: tuple(Probe(ask(_as_question(p.prompt)), p.answer)
                                  for p in probes)
                      for kind, probes in record.locality.items()}))
    return out


def _statements() -> list[tuple[re.Pattern, Relation]]:
    """Each relation's statement templates as patterns that capture the subject."""
    return [(re.compile(re.escape(t.text).replace(re.escape("{s}"), "(.+)") + "$"), r)
            for r in RELATIONS_BY_NAME.values() for t in r.of_form("statement")]


_STATEMENTS = _statements()


def _as_question(prompt: str) -> str:
    """A relation's statement about a subject as the relation's first question about it;
    any other prompt (a question already) as it is."""
    for pattern, relation in _STATEMENTS:
        found = pattern.match(prompt)
        if found:
            return relation.of_form("question", reserved=False)[0].prompt(found.group(1))
    return prompt

