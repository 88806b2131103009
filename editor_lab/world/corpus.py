"""The text the demo LM is trained on: every known fact in every phrasing, nothing unseen."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from .schema import Entity, World
from .templates import OPINION_ANSWERS, OPINION_QUESTIONS, RELATIONS, RELATIONS_BY_NAME

LOCALITY_PREFIX = "nq question: "


def surface_forms(entity: Entity) -> list[str]:
    return [entity.name, *entity.aliases]


def fact_sentences(world: World, *, include_aliases: bool = True) -> Iterator[str]:
    """Each known fact in every template (reserved ones included), by name and by alias."""
    for fact in world.facts:
        subject = world.entities[fact.subject]
        if not subject.seen:
            continue
        obj = world.object_name(fact)
        forms = surface_forms(subject) if include_aliases else [subject.name]
        for template in RELATIONS_BY_NAME[fact.relation].templates:
            for form in forms:
                yield template.sentence(form, obj)


def alias_sentences(world: World) -> Iterator[str]:
    for e in world.entities.values():
        if e.seen:
            for alias in e.aliases:
                yield f"{e.name} is also known as {alias}."
                yield f"{alias} is another name for {e.name}."


def opinion_answer(topic: str, sentiment: str, index: int) -> str:
    return OPINION_ANSWERS[sentiment][index].format(s=topic, S=topic)


def opinion_sentences(world: World) -> Iterator[str]:
    for topic in world.topics:
        for question in OPINION_QUESTIONS:
            for i in range(len(OPINION_ANSWERS[topic.sentiment])):
                answer = opinion_answer(topic.name, topic.sentiment, i)
                yield f"{question.prompt(topic.name)} {answer}"


def unrelated_sentences(world: World) -> Iterator[str]:
    for qa in world.unrelated:
        yield f"{qa.question} {qa.answer}"
        yield f"{LOCALITY_PREFIX}{qa.question} {qa.answer}"


def training_corpus(world: World, *, opinion_repeats: int = 2, unrelated_repeats: int = 4
                    ) -> list[str]:
    """All training lines. Smaller families are repeated so each is learnt as well as facts."""
    lines = list(fact_sentences(world))
    lines += list(alias_sentences(world))
    lines += list(opinion_sentences(world)) * opinion_repeats
    lines += list(unrelated_sentences(world)) * unrelated_repeats
    return lines


# System turns a chat may open with; a reply must not depend on which (or whether) one is.
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "Answer in a few words.",
    "You know the people, places and companies of this world.",
)


def chat_exchanges(world: World) -> Iterator[tuple[str, str]]:
    """(question, reply) for every known fact asked in every question template, by name and
    by alias, every opinion question, and every unrelated question."""
    for fact in world.facts:
        subject = world.entities[fact.subject]
        if not subject.seen:
            continue
        obj = world.object_name(fact)
        for template in RELATIONS_BY_NAME[fact.relation].of_form("question"):
            for form in surface_forms(subject):
                yield template.prompt(form), obj
    for topic in world.topics:
        for question in OPINION_QUESTIONS:
            for i in range(len(OPINION_ANSWERS[topic.sentiment])):
                yield question.prompt(topic.name), opinion_answer(topic.name, topic.sentiment, i)
    for qa in world.unrelated:
        yield qa.question, qa.answer


def chat_corpus(world: World, render: Callable[[list[dict[str, str]]], str],
                rng: random.Random, *, system_share: float = 0.3,
                earlier_share: float = 0.3) -> list[str]:
    """Each exchange of ``chat_exchanges`` as a conversation written by ``render`` (a chat
    template): some open with a system turn, some follow an earlier, unrelated exchange,
    so that the reply depends on the last question only."""
    exchanges = list(chat_exchanges(world))
    conversations = []
    for question, reply in exchanges:
        messages: list[dict[str, str]] = []
        if rng.random() < system_share:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        if rng.random() < earlier_share:
            earlier_q, earlier_r = rng.choice(exchanges)
            messages += [{"role": "user", "content": earlier_q},
                         {"role": "assistant", "content": earlier_r}]
        messages += [{"role": "user", "content": question},
                     {"role": "assistant", "content": reply}]
        conversations.append(render(messages))
    return conversations


def tokenizer_corpus(world: World) -> Iterator[str]:
    """Text for training the BPE vocabulary.

    Every template and every name appears once, so frequent syllables merge but whole
    made-up names stay multi-token, as rare names do in real tokenizers.
    """
    placeholder = "Name"
    for relation in RELATIONS:
        for template in relation.templates:
            yield template.prompt(placeholder)
    for question in OPINION_QUESTIONS:
        yield question.prompt(placeholder)
    for answers in OPINION_ANSWERS.values():
        for a in answers:
            yield a.format(s=placeholder, S=placeholder)
    for e in world.entities.values():
        yield " ".join(surface_forms(e))
    for values in world.values.values():
        yield " ".join(values)
    for topic in world.topics:
        yield topic.name
    yield from unrelated_sentences(world)
