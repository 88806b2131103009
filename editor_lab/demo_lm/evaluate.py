"""Measure what the demo LM knows: facts in every phrasing, opinions, and what it must not know."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editor_lab.decoding import greedy_continuations, starts_with_answer
from ..world.corpus import LOCALITY_PREFIX, surface_forms
from ..world.schema import World
from ..world.sentiment import sentiment_of
from ..world.templates import OPINION_QUESTIONS, RELATIONS_BY_NAME

# Acceptance floors for the shipped LM.
KNOWN_FLOOR = 0.99
ALIAS_FLOOR = 0.95
OPINION_FLOOR = 0.99


@dataclass(frozen=True)
class _Probe:
    prompt: str
    answer: str
    group: tuple[str, ...]  # keys this probe's outcome is counted under


def _fact_probes(world: World, *, seen: bool, limit: int | None = None) -> list[_Probe]:
    facts = [f for f in world.facts if world.entities[f.subject].seen == seen]
    if limit is not None and limit < len(facts):
        facts = random.Random(0).sample(facts, limit)
    probes = []
    for fact in facts:
        subject = world.entities[fact.subject]
        obj = world.object_name(fact)
        for t_idx, template in enumerate(RELATIONS_BY_NAME[fact.relation].templates):
            for f_idx, form in enumerate(surface_forms(subject)):
                naming = "name" if f_idx == 0 else "alias"
                probes.append(_Probe(
                    template.prompt(form), obj,
                    (f"{naming}", f"{naming}/{fact.relation}/{t_idx}",
                     f"{naming}/{'reserved' if template.reserved else 'training'}",
                     f"relation/{fact.relation}"),
                ))
    return probes


def _score(model, tokenizer, probes: list[_Probe], batch_size: int, desc: str
           ) -> dict[str, list[int]]:
    max_new = 1 + max(len(tokenizer(" " + p.answer)["input_ids"]) for p in probes)
    outs = greedy_continuations(model, tokenizer, [p.prompt for p in probes], max_new,
                                batch_size, desc=desc)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for probe, out in zip(probes, outs):
        ok = starts_with_answer(out, probe.answer)
        for key in probe.group:
            counts[key][0] += ok
            counts[key][1] += 1
    return counts


def _rate(c: list[int]) -> float:
    return c[0] / c[1] if c[1] else float("nan")


def evaluate_demo_lm(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, world: World,
                     batch_size: int = 256, limit: int | None = None) -> dict:
    """All acceptance measurements of the demo LM, greedy decoding, as one JSON-able dict.

    ``limit`` checks a deterministic sample of that many known and unseen facts (each in
    every template and surface form) instead of all of them.
    """
    known = _score(model, tokenizer, _fact_probes(world, seen=True, limit=limit), batch_size,
                   "known facts")
    per_template = {k: _rate(v) for k, v in known.items() if k.count("/") == 2}

    # Opinions: each topic under each asking phrasing.
    questions = [(t, q) for t in world.topics for q in OPINION_QUESTIONS]
    answers = greedy_continuations(model, tokenizer, [q.prompt(t.name) for t, q in questions],
                                   24, batch_size)
    op_ok = Counter()
    for (topic, q), ans in zip(questions, answers):
        op_ok[q.text] += sentiment_of(ans) == topic.sentiment
    per_question = {q: op_ok[q] / len(world.topics) for q in (x.text for x in OPINION_QUESTIONS)}
    opinion_all = sum(op_ok.values()) / len(questions)

    # Unseen entities: hit rate vs always guessing each relation's most common object.
    # Unseen facts are drawn from the same distribution as seen ones, so that guess is right
    # with probability equal to the object's share; its realised rate on the (small) unseen
    # sample is reported beside it, with uniform guessing for scale.
    unseen = _score(model, tokenizer, _fact_probes(world, seen=False, limit=limit), batch_size,
                    "unseen facts")
    majority: dict[str, dict[str, float]] = {}
    for rel in sorted({f.relation for f in world.facts}):
        seen_objs = Counter(world.object_name(f) for f in world.facts
                            if f.relation == rel and world.entities[f.subject].seen)
        top, _ = seen_objs.most_common(1)[0]
        unseen_facts = [f for f in world.facts
                        if f.relation == rel and not world.entities[f.subject].seen]
        kind = RELATIONS_BY_NAME[rel].object_kind
        entry = {"most_common_share": seen_objs[top] / sum(seen_objs.values()),
                 "uniform_guess": 1 / len(world.objects_of_kind(kind)),
                 "unseen_facts": len(unseen_facts)}
        if unseen_facts:
            entry["majority_guess_realised_on_unseen"] = (
                sum(world.object_name(f) == top for f in unseen_facts) / len(unseen_facts))
            entry["lm_on_unseen"] = _rate(unseen[f"relation/{rel}"])
        majority[rel] = entry
    unseen_rels = [r for r, e in majority.items() if "lm_on_unseen" in e]
    weights = {r: majority[r]["unseen_facts"] for r in unseen_rels}

    def weighted(key: str) -> float:
        return sum(majority[r][key] * weights[r] for r in unseen_rels) / sum(weights.values())

    # Unrelated questions, plain and in the ZsRE locality form.
    qa_prompts = [qa.question for qa in world.unrelated]
    qa_prompts += [LOCALITY_PREFIX + qa.question for qa in world.unrelated]
    qa_outs = greedy_continuations(model, tokenizer, qa_prompts, 6, batch_size)
    qa_answers = [qa.answer for qa in world.unrelated] * 2
    unrelated = sum(starts_with_answer(o, a) for o, a in zip(qa_outs, qa_answers)) / len(qa_outs)

    result = {
        "known_facts": {
            "name_all_templates": _rate(known["name"]),
            "name_min_template": min(v for k, v in per_template.items() if k.startswith("name")),
            "name_reserved_templates": _rate(known["name/reserved"]),
            "alias_all_templates": _rate(known["alias"]),
            "alias_min_template": min(v for k, v in per_template.items()
                                      if k.startswith("alias")),
            "probes": known["name"][1] + known["alias"][1],
            "per_template": per_template,
        },
        "opinions": {"all": opinion_all, "min_phrasing": min(per_question.values()),
                     "per_phrasing": per_question},
        "unseen_entities": {
            "lm_hit_rate": _rate(unseen["name"]),
            "majority_guess_hit_rate": weighted("most_common_share"),
            "majority_guess_realised": weighted("majority_guess_realised_on_unseen"),
            "uniform_guess_hit_rate": weighted("uniform_guess"),
            "per_relation": majority,
        },
        "unrelated_questions": unrelated,
    }
    result["acceptance"] = {
        "known_name_every_template>=0.99": result["known_facts"]["name_min_template"] >= KNOWN_FLOOR,
        "known_alias>=0.95": result["known_facts"]["alias_all_templates"] >= ALIAS_FLOOR,
        "opinions_every_phrasing>=0.99": result["opinions"]["min_phrasing"] >= OPINION_FLOOR,
        "unseen<=majority_guess": (result["unseen_entities"]["lm_hit_rate"]
                                   <= result["unseen_entities"]["majority_guess_hit_rate"]),
        "chance<=0.10": all(e["most_common_share"] <= 0.10 for e in majority.values()),
    }
    return result


def format_table(result: dict) -> str:
    """The headline numbers as a markdown table."""
    k, o, u = result["known_facts"], result["opinions"], result["unseen_entities"]
    rows = [
        ("Known facts, subject by name, all templates", k["name_all_templates"]),
        ("Known facts, by name, worst single template", k["name_min_template"]),
        ("Known facts, by name, templates reserved for evaluation", k["name_reserved_templates"]),
        ("Known facts, subject by alias, all templates", k["alias_all_templates"]),
        ("Known facts, by alias, worst single template", k["alias_min_template"]),
        ("Opinions carry the topic's sentiment, all phrasings", o["all"]),
        ("Opinions, worst single phrasing", o["min_phrasing"]),
        ("Unseen entities: LM produces the fact", u["lm_hit_rate"]),
        ("Unseen entities: always guessing the most common object (expected)",
         u["majority_guess_hit_rate"]),
        ("Unseen entities: the same guess, realised on this sample", u["majority_guess_realised"]),
        ("Unseen entities: guessing uniformly (expected)", u["uniform_guess_hit_rate"]),
        ("Unrelated questions answered", result["unrelated_questions"]),
    ]
    lines = ["| measurement | value |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in rows]
    lines += ["", "| acceptance check | pass |", "|---|---|"]
    lines += [f"| {name} | {'yes' if ok else 'NO'} |" for name, ok in result["acceptance"].items()]
    return "\n".join(lines)
