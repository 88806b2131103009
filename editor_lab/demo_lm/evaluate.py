"""Measure what the demo LM knows: facts in every phrasing, opinions, and what it must not know."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editor_core.answers import is_exact
from editor_core.chat_template import chat_wordings
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


def _sample(world: World, *, seen: bool, limit: int | None):
    facts = [f for f in world.facts if world.entities[f.subject].seen == seen]
    if limit is not None and limit < len(facts):
        facts = random.Random(0).sample(facts, limit)
    return facts


def _fact_probes(world: World, *, seen: bool, limit: int | None = None) -> list[_Probe]:
    probes = []
    for fact in _sample(world, seen=seen, limit=limit):
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


def _chat_probes(world: World, tokenizer: PreTrainedTokenizerBase, limit: int | None
                 ) -> list[_Probe]:
    """Every question template of each known fact asked as a chat user's turn, by name
    and by alias (none where the template writes a question as the plain question)."""
    probes = []
    for fact in _sample(world, seen=True, limit=limit):
        subject = world.entities[fact.subject]
        for template in RELATIONS_BY_NAME[fact.relation].of_form("question"):
            for f_idx, form in enumerate(surface_forms(subject)):
                asked = chat_wordings(tokenizer, [template.prompt(form)])
                if asked:
                    naming = "name" if f_idx == 0 else "alias"
                    probes.append(_Probe(asked[0], world.object_name(fact),
                                         (f"chat/{naming}", f"chat/{naming}/{fact.relation}")))
    return probes


def _score(model, tokenizer, probes: list[_Probe], batch_size: int, desc: str
           ) -> dict[str, list[int]]:
    """Per group key, [answers that start with the answer, probes]; under ``exact/<key>``
    the answers whose line is exactly it (a trailing period allowed)."""
    max_new = 2 + max(len(tokenizer(" " + p.answer)["input_ids"]) for p in probes)
    outs = greedy_continuations(model, tokenizer, [p.prompt for p in probes], max_new,
                                batch_size, desc=desc)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for probe, out in zip(probes, outs):
        ok, exact = starts_with_answer(out, probe.answer), is_exact(out, probe.answer)
        for key in probe.group:
            counts[key][0] += ok
            counts[key][1] += 1
            counts[f"exact/{key}"][0] += exact
            counts[f"exact/{key}"][1] += 1
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
    per_template = {k: _rate(v) for k, v in known.items()
                    if k.count("/") == 2 and not k.startswith("exact/")}
    chat_probes = _chat_probes(world, tokenizer, limit)
    chat = _score(model, tokenizer, chat_probes, batch_size, "chat") if chat_probes else None

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
            "name_exact": _rate(known["exact/name"]),
            "alias_exact": _rate(known["exact/alias"]),
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
    if chat is not None:
        result["chat"] = {
            "name_exact": _rate(chat["exact/chat/name"]),
            "alias_exact": _rate(chat["exact/chat/alias"]),
            "name": _rate(chat["chat/name"]), "alias": _rate(chat["chat/alias"]),
            "probes": chat["chat/name"][1] + chat["chat/alias"][1],
            "per_relation": {k.removeprefix("exact/chat/"): _rate(v) for k, v in chat.items()
                             if k.startswith("exact/chat/") and k.count("/") == 3}}
    result["acceptance"] = {
        "known_name_every_template>=0.99":
            result["known_facts"]["name_min_template"] >= KNOWN_FLOOR,
        "known_alias>=0.95": result["known_facts"]["alias_all_templates"] >= ALIAS_FLOOR,
        "known_exact_by_name>=0.99": result["known_facts"]["name_exact"] >= KNOWN_FLOOR,
        "opinions_every_phrasing>=0.99": result["opinions"]["min_phrasing"] >= OPINION_FLOOR,
        "unseen<=majority_guess": (result["unseen_entities"]["lm_hit_rate"]
                                   <= result["unseen_entities"]["majority_guess_hit_rate"]),
        "chance<=0.10": all(e["most_common_share"] <= 0.10 for e in majority.values()),
    }
    if chat is not None:
        result["acceptance"]["chat_exact_by_name_and_alias>=0.99"] = min(
            result["chat"]["name_exact"], result["chat"]["alias_exact"]) >= KNOWN_FLOOR
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
        ("Known facts, by name, the answer's line exactly the object", k["name_exact"]),
        ("Known facts, by alias, the answer's line exactly the object", k["alias_exact"]),
        ("Opinions carry the topic's sentiment, all phrasings", o["all"]),
        ("Opinions, worst single phrasing", o["min_phrasing"]),
        ("Unseen entities: LM produces the fact", u["lm_hit_rate"]),
        ("Unseen entities: always guessing the most common object (expected)",
         u["majority_guess_hit_rate"]),
        ("Unseen entities: the same guess, realised on this sample", u["majority_guess_realised"]),
        ("Unseen entities: guessing uniformly (expected)", u["uniform_guess_hit_rate"]),
        ("Unrelated questions answered", result["unrelated_questions"]),
    ]
    if "chat" in result:
        c = result["chat"]
        rows += [("Chat: questions by name, the reply exactly the object", c["name_exact"]),
                 ("Chat: questions by alias, the reply exactly the object", c["alias_exact"]),
                 ("Chat: questions by name, the reply starts with the object", c["name"])]
    lines = ["| measurement | value |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in rows]
    lines += ["", "| acceptance check | pass |", "|---|---|"]
    lines += [f"| {name} | {'yes' if ok else 'NO'} |" for name, ok in result["acceptance"].items()]
    return "\n".join(lines)
