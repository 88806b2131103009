"""Export the demo world's edit data sets in the real KnowEdit file formats.

- CounterFact and Recent: KnowEdit ``wiki_counterfact`` / ``wiki_recent`` records.
- ZsRE: MEND's ``zsre_mend_*.json`` records (question form, ``nq question:`` locality).
- ConvSent: KnowEdit edit records, plus the per-topic answer lists (``ent``/``pos``/``neg``).
- A multi-task training file with a ``type`` field, as InstructEdit's trainer reads.

Splits are by subject: no subject appears in two splits of a task. Train and validation
records only use training templates; test records ask their paraphrases in the templates
reserved for evaluation, so generalisation is measured on phrasings the editor never saw.
Extra fields beyond the public layouts (``paraphrases``, ``Neighborhood``, ``Unrelated``)
are additions that public loaders ignore.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .corpus import LOCALITY_PREFIX, opinion_answer
from .schema import Entity, Fact, World
from .templates import (
    OPINION_ANSWERS,
    OPINION_QUESTIONS,
    RELATIONS_BY_NAME,
    TWO_HOP_TEMPLATES,
    Template,
)

SPLITS: tuple[str, ...] = ("train", "validation", "test")
SPLIT_SHARES: tuple[float, float] = (0.7, 0.1)  # train, validation; the rest is test

# Which relations each fact-editing task draws on. ZsRE asks about places and companies,
# CounterFact and Recent about people: the held-out task differs in more than wording.
TASK_RELATIONS: dict[str, tuple[str, ...]] = {
    "counterfact": ("citizenship", "birthplace", "employer", "profession"),
    "recent": ("citizenship", "birthplace", "employer", "profession"),
    "zsre": ("headquarters", "industry", "country", "capital", "language"),
}
# KnowEdit's name for the Recent task in multi-task files.
MULTITASK_TYPE = {"counterfact": "counterfact", "recent": "wikirecent", "convsent": "convsent",
                  "zsre": "zsre"}


def split_subjects(subjects: list[str], rng: random.Random) -> dict[str, str]:
    """Assign each subject to one split (deterministic for a given rng state)."""
    order = sorted(set(subjects))
    rng.shuffle(order)
    n_train = round(len(order) * SPLIT_SHARES[0])
    n_val = round(len(order) * SPLIT_SHARES[1])
    return {s: ("train" if i < n_train else "validation" if i < n_train + n_val else "test")
            for i, s in enumerate(order)}


class _Exporter:
    def __init__(self, world: World, rng: random.Random) -> None:
        self.world = world
        self.rng = rng

    # -- helpers -----------------------------------------------------------------------
    def templates(self, relation: str, form: str, split: str) -> tuple[list[Template],
                                                                        list[Template]]:
        """(templates for the edit prompt, templates for its paraphrases) in a split."""
        rel = RELATIONS_BY_NAME[relation]
        train = rel.of_form(form, reserved=False)
        if split == "test":
            return train, rel.of_form("statement", reserved=True) + rel.of_form(
                "question", reserved=True)
        return train, train

    def counterfactual(self, fact: Fact) -> str:
        kind = RELATIONS_BY_NAME[fact.relation].object_kind
        choices = [o for o in self.world.objects_of_kind(kind) if o != fact.object]
        return self.rng.choice(sorted(choices))

    def name(self, obj: str) -> str:
        ent = self.world.entities.get(obj)
        return ent.name if ent else obj

    def locality_probes(self, subject: Entity, relation: str, form: str
                        ) -> dict[str, list[dict[str, Any]]]:
        w = self.world
        same_subject = []
        for other in w.facts_of(subject.id):
            if other.relation != relation:
                t = self.rng.choice(RELATIONS_BY_NAME[other.relation].of_form(form, reserved=False))
                same_subject.append(_entry(t.prompt(subject.name), w.object_name(other)))
        neighbours = []
        pool = [n for n in w.neighbours(subject.id) if n.seen]
        for n in self.rng.sample(pool, min(3, len(pool))):
            fact = w.fact(n.id, relation)
            if fact is not None:
                t = self.rng.choice(RELATIONS_BY_NAME[relation].of_form(form, reserved=False))
                neighbours.append(_entry(t.prompt(n.name), w.object_name(fact)))
        unrelated = [_entry(qa.question, qa.answer) for qa in self.rng.sample(w.unrelated, 2)]
        out = {"Relation_Specificity": same_subject, "Neighborhood": neighbours,
               "Unrelated": unrelated}
        if not subject.seen:  # the LM knows nothing else about an unseen subject
            del out["Relation_Specificity"]
        return {k: v for k, v in out.items() if v}

    def portability_probes(self, subject: Entity, fact: Fact, new_object: str,
                           form: str) -> dict[str, list[dict[str, Any]]]:
        rel = RELATIONS_BY_NAME[fact.relation]
        aliasing = [_entry(t.prompt(a), self.name(new_object))
                    for a in subject.aliases for t in rel.of_form(form, reserved=False)[:1]]
        reasoning = []
        for (first, second), text in TWO_HOP_TEMPLATES.items():
            if first == fact.relation:
                hop = self.world.fact(new_object, second)
                if hop is not None:
                    reasoning.append(_entry(text.format(s=subject.name),
                                            self.world.object_name(hop)))
        out = {"Subject_Aliasing": aliasing, "Reasoning": reasoning}
        return {k: v for k, v in out.items() if v}

    # -- tasks -------------------------------------------------------------------------
    def fact_task(self, task: str) -> dict[str, list[dict[str, Any]]]:
        w = self.world
        seen = task != "recent"
        facts = [f for f in w.facts if f.relation in TASK_RELATIONS[task]
                 and w.entities[f.subject].seen == seen]
        splits = split_subjects([f.subject for f in facts], self.rng)
        out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
        for fact in facts:
            subject = w.entities[fact.subject]
            split = splits[fact.subject]
            make = self.zsre_record if task == "zsre" else self.knowedit_record
            out[split].append(make(task, subject, fact, split))
        return out

    def knowedit_record(self, task: str, subject: Entity, fact: Fact, split: str
                        ) -> dict[str, Any]:
        prompt_ts, para_ts = self.templates(fact.relation, "statement", split)
        t = self.rng.choice(prompt_ts)
        paraphrases = [p.prompt(subject.name) for p in para_ts if p != t]
        if task == "recent":
            new_object = fact.object  # the world's truth, which the LM never saw
        else:
            new_object = self.counterfactual(fact)
        record: dict[str, Any] = {
            "subject": subject.name,
            "prompt": t.prompt(subject.name),
            "target_new": self.name(new_object),
        }
        if task == "counterfact":
            record["ground_truth"] = self.world.object_name(fact)
        record["rephrase"] = paraphrases[0]
        record["paraphrases"] = paraphrases
        record["portability"] = self.portability_probes(subject, fact, new_object, "statement")
        record["locality"] = self.locality_probes(subject, fact.relation, "statement")
        record["relation"] = fact.relation
        return record

    def zsre_record(self, task: str, subject: Entity, fact: Fact, split: str) -> dict[str, Any]:
        prompt_ts, para_ts = self.templates(fact.relation, "question", split)
        t = self.rng.choice(prompt_ts)
        paraphrases = [p.prompt(subject.name) for p in para_ts if p != t]
        new_object = self.counterfactual(fact)
        qa = self.rng.choice(self.world.unrelated)
        alias_q = RELATIONS_BY_NAME[fact.relation].of_form("question", reserved=False)[0]
        truth = self.world.object_name(fact)
        return {
            "subject": subject.name,
            "src": t.prompt(subject.name),
            "pred": truth,
            "rephrase": paraphrases[0],
            "paraphrases": paraphrases,
            "alt": self.name(new_object),
            "answers": [truth],
            "loc": LOCALITY_PREFIX + qa.question,
            "loc_ans": qa.answer,
            "cond": f"{truth} >> {self.name(new_object)} || {t.prompt(subject.name)}",
            "portability": {"New Question": alias_q.prompt(subject.aliases[0]),
                            "New Answer": self.name(new_object)},
            "locality": self.locality_probes(subject, fact.relation, "question"),
            "relation": fact.relation,
        }

    def convsent(self) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
        """(KnowEdit edit records, per-topic answer lists), both split by topic."""
        w = self.world
        splits = split_subjects([t.name for t in w.topics], self.rng)
        edits: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
        topics: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
        for topic in w.topics:
            split = splits[topic.name]
            flipped = "negative" if topic.sentiment == "positive" else "positive"
            train_qs = [q for q in OPINION_QUESTIONS if not q.reserved]
            para_qs = [q for q in OPINION_QUESTIONS if q.reserved] if split == "test" else train_qs
            q = self.rng.choice(train_qs)
            n_answers = len(OPINION_ANSWERS[flipped])
            target_answers = [opinion_answer(topic.name, flipped, i) for i in range(n_answers)]
            old_answers = [opinion_answer(topic.name, topic.sentiment, i)
                           for i in range(len(OPINION_ANSWERS[topic.sentiment]))]
            others = self.rng.sample([t for t in w.topics if t.name != topic.name], 3)
            locality = [_entry(self.rng.choice(train_qs).prompt(o.name),
                               opinion_answer(o.name, o.sentiment, 0)) for o in others]
            edits[split].append({
                "subject": topic.name,
                "prompt": q.prompt(topic.name),
                "target_new": target_answers[0],
                "ground_truth": old_answers[0],
                "rephrase": next(p.prompt(topic.name) for p in para_qs if p != q),
                "paraphrases": [p.prompt(topic.name) for p in para_qs if p != q],
                "sentiment": flipped,
                "target_answers": target_answers,
                "opposite_answers": old_answers,
                "locality": {"Neighborhood": locality},
            })
            pos, neg = ((old_answers, target_answers) if topic.sentiment == "positive"
                        else (target_answers, old_answers))
            topics[split].append({"ent": topic.name, "pos": pos, "neg": neg})
        return edits, topics


def _entry(prompt: str, answer: str) -> dict[str, Any]:
    """A locality/portability entry, with the answer nested the way KnowEdit often has it."""
    return {"prompt": prompt, "ground_truth": [[answer]]}


def export_world(world: World, out_dir: Path, seed: int | None = None,
                 progress: Callable[[str], None] | None = None) -> dict[str, dict[str, int]]:
    """Write ``world.json``, corpus-free task files and the multi-task file; return counts."""
    rng = random.Random(world.seed if seed is None else seed)
    ex = _Exporter(world, rng)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write(out_dir / "world.json", world.to_json())
    files: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for task in ("counterfact", "recent", "zsre"):
        files[task] = ex.fact_task(task)
        if progress:
            progress(task)
    files["convsent"], files["convsent_topics"] = ex.convsent()
    counts: dict[str, dict[str, int]] = {}
    for name, by_split in files.items():
        counts[name] = {}
        for split, records in by_split.items():
            _write(out_dir / f"{name}_{split}.json", records)
            counts[name][split] = len(records)
    for split in SPLITS:
        multitask = [{"type": MULTITASK_TYPE[task], **record}
                     for task in ("counterfact", "recent", "convsent")
                     for record in files[task][split]]
        _write(out_dir / f"multitask_{split}.json", multitask)
    _write(out_dir / "counts.json", counts)
    return counts


def _write(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
