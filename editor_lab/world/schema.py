"""The demo knowledge world as plain data: entities, facts, topics and unrelated questions."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Entity:
    """A named thing. ``seen`` is False for entities kept out of the LM's training text."""

    id: str
    kind: str
    name: str
    aliases: tuple[str, ...]
    parts: tuple[str, ...]  # the name parts it shares with its neighbours
    seen: bool = True


@dataclass(frozen=True)
class Fact:
    subject: str  # entity id
    relation: str
    object: str  # entity id, or a plain value for value kinds (profession, industry, language)


@dataclass(frozen=True)
class Topic:
    """Something the LM holds an opinion about."""

    name: str
    sentiment: str  # "positive" or "negative"


@dataclass(frozen=True)
class QAPair:
    """An unrelated question the LM knows the answer to; used to check locality."""

    question: str
    answer: str


@dataclass
class World:
    seed: int
    entities: dict[str, Entity]
    facts: list[Fact]
    topics: list[Topic]
    unrelated: list[QAPair]
    values: dict[str, list[str]] = field(default_factory=dict)  # value kind -> its values

    def __post_init__(self) -> None:
        self._by_subject: dict[str, dict[str, Fact]] = {}
        for f in self.facts:
            self._by_subject.setdefault(f.subject, {})[f.relation] = f

    def object_name(self, fact: Fact) -> str:
        ent = self.entities.get(fact.object)
        return ent.name if ent is not None else fact.object

    def facts_of(self, subject: str) -> list[Fact]:
        return list(self._by_subject.get(subject, {}).values())

    def fact(self, subject: str, relation: str) -> Fact | None:
        return self._by_subject.get(subject, {}).get(relation)

    def of_kind(self, kind: str, *, seen: bool | None = None) -> list[Entity]:
        return [
            e
            for e in self.entities.values()
            if e.kind == kind and (seen is None or e.seen == seen)
        ]

    def objects_of_kind(self, kind: str) -> list[str]:
        """Every possible object id (or value) of a kind, seen entities only."""
        if kind in self.values:
            return list(self.values[kind])
        return [e.id for e in self.of_kind(kind, seen=True)]

    def neighbours(self, entity_id: str) -> list[Entity]:
        """Entities of the same kind whose names share a part with this one."""
        me = self.entities[entity_id]
        mine = set(me.parts)
        return [
            e
            for e in self.entities.values()
            if e.kind == me.kind and e.id != me.id and mine & set(e.parts)
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "entities": [asdict(e) for e in self.entities.values()],
            "facts": [asdict(f) for f in self.facts],
            "topics": [asdict(t) for t in self.topics],
            "unrelated": [asdict(q) for q in self.unrelated],
            "values": self.values,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> World:
        entities = {}
        for e in data["entities"]:
            ent = Entity(**{**e, "aliases": tuple(e["aliases"]), "parts": tuple(e["parts"])})
            entities[ent.id] = ent
        return cls(
            seed=data["seed"],
            entities=entities,
            facts=[Fact(**f) for f in data["facts"]],
            topics=[Topic(**t) for t in data["topics"]],
            unrelated=[QAPair(**q) for q in data["unrelated"]],
            values=data["values"],
        )
