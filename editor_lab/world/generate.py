"""Build the demo knowledge world deterministically from a seed."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .names import NameForge
from .schema import Entity, Fact, QAPair, Topic, World
from .templates import INDUSTRIES, PROFESSIONS, RELATIONS, TOPIC_KINDS


@dataclass(frozen=True)
class WorldConfig:
    """Sizes of the world. Unseen entities never appear in the LM's training text."""

    seed: int = 0
    countries: int = 30
    cities_per_country: int = 3
    languages: int = 15
    companies: int = 60
    unseen_companies: int = 15
    people: int = 300
    unseen_people: int = 80
    first_names: int = 110
    surnames: int = 130
    topics: int = 120
    arithmetic_questions: int = 80


_COMPANY_SUFFIXES = ("Dynamics", "Labs", "Works", "Holdings", "Systems", "Industries",
                     "Partners", "Group", "Trading", "Foundry")
_COUNTRY_ENDINGS = ("ia", "land", "ovia", "esh", "ara", "istan")
_LANGUAGE_ENDINGS = ("ish", "ese", "ic", "an")

_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_OPPOSITES = (("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"),
              ("light", "dark"), ("early", "late"), ("open", "closed"), ("full", "empty"),
              ("old", "young"), ("wet", "dry"), ("loud", "quiet"), ("strong", "weak"),
              ("rich", "poor"), ("hard", "soft"), ("high", "low"), ("near", "far"))
_COLOURS = (("grass", "green"), ("snow", "white"), ("coal", "black"), ("the sky", "blue"),
            ("a ripe banana", "yellow"), ("blood", "red"), ("an orange", "orange"),
            ("a lemon", "yellow"), ("milk", "white"), ("a tomato", "red"))


def _composed_names(forge: NameForge, rng: random.Random, count: int, stems: list[str],
                    endings: list[str]) -> list[tuple[str, tuple[str, str]]]:
    """``count`` unique names stem+ending; shared stems/endings make neighbours."""
    out: list[tuple[str, tuple[str, str]]] = []
    while len(out) < count:
        stem, end = rng.choice(stems), rng.choice(endings)
        name = (stem + end).capitalize()
        if 5 <= len(name) <= 13 and forge.reserve(name):
            out.append((name, (stem, end)))
    return out


def _stem_pool(forge: NameForge, size: int) -> list[str]:
    return [forge.syllable() for _ in range(size)]


def _unrelated_questions(rng: random.Random, arithmetic: int) -> list[QAPair]:
    qa: list[QAPair] = []
    for i, day in enumerate(_DAYS):
        qa.append(QAPair(f"Which day comes after {day}?", _DAYS[(i + 1) % 7]))
    for i, month in enumerate(_MONTHS):
        qa.append(QAPair(f"Which month comes after {month}?", _MONTHS[(i + 1) % 12]))
    for a, b in _OPPOSITES:
        qa.append(QAPair(f"What is the opposite of {a}?", b))
    for thing, colour in _COLOURS:
        qa.append(QAPair(f"What colour is {thing}?", colour))
    pairs = [(a, b) for a in range(1, 13) for b in range(1, 13)]
    for a, b in rng.sample(pairs, arithmetic):
        qa.append(QAPair(f"What is {a} plus {b}?", str(a + b)))
    return qa


def build_world(config: WorldConfig = WorldConfig()) -> World:
    """Generate entities, facts, opinions and unrelated questions; same seed, same world."""
    rng = random.Random(config.seed)
    forge = NameForge(rng)
    entities: dict[str, Entity] = {}
    facts: list[Fact] = []

    def add(ent: Entity) -> Entity:
        entities[ent.id] = ent
        return ent

    # Countries and their languages.
    country_names = _composed_names(forge, rng, config.countries, _stem_pool(forge, 24),
                                    list(_COUNTRY_ENDINGS))
    countries = [
        add(Entity(f"country/{i}", "country", name, (f"Republic of {name}",), parts[:1]))
        for i, (name, parts) in enumerate(country_names)
    ]
    languages = [n for n, _ in _composed_names(forge, rng, config.languages,
                                               _stem_pool(forge, 20), list(_LANGUAGE_ENDINGS))]

    # Cities: a few per country, the first one its capital.
    city_names = _composed_names(forge, rng, config.countries * config.cities_per_country,
                                 _stem_pool(forge, 40), _stem_pool(forge, 30))
    cities: list[Entity] = []
    for i, (name, parts) in enumerate(city_names):
        city = add(Entity(f"city/{i}", "city", name, (f"{name} City",), parts))
        cities.append(city)
        country = countries[i // config.cities_per_country]
        facts.append(Fact(city.id, "country", country.id))
        if i % config.cities_per_country == 0:
            facts.append(Fact(country.id, "capital", city.id))
    lang_order = languages * (len(countries) // len(languages) + 1)
    rng.shuffle(lang_order)
    for country, lang in zip(countries, lang_order):
        facts.append(Fact(country.id, "language", lang))

    # Companies (some unseen): a core word shared in parts, plus a suffix.
    n_comp = config.companies + config.unseen_companies
    cores = _composed_names(forge, rng, n_comp, _stem_pool(forge, 30), _stem_pool(forge, 25))
    industries = list(INDUSTRIES) * (n_comp // len(INDUSTRIES) + 1)
    rng.shuffle(industries)
    companies: list[Entity] = []
    for i, (core, parts) in enumerate(cores):
        name = f"{core} {rng.choice(_COMPANY_SUFFIXES)}"
        seen = i < config.companies
        comp = add(Entity(f"company/{i}", "company", name, (f"{core} Co.",), parts, seen))
        companies.append(comp)
        facts.append(Fact(comp.id, "headquarters", rng.choice(cities).id))
        facts.append(Fact(comp.id, "industry", industries[i]))
    known_companies = [c for c in companies if c.seen]

    # People (some unseen) from shared first names and surnames.
    firsts = forge.pool(config.first_names, 2)
    lasts = forge.pool(config.surnames, 2) + forge.pool(config.surnames // 3, 3)
    used_names: set[str] = set()
    used_aliases: set[str] = set()
    n_people = config.people + config.unseen_people
    people: list[Entity] = []
    while len(people) < n_people:
        first, last = rng.choice(firsts), rng.choice(lasts)
        name, alias = f"{first} {last}", f"{first[0]}. {last}"
        if name in used_names or alias in used_aliases:
            continue
        used_names.add(name)
        used_aliases.add(alias)
        i = len(people)
        seen = i < config.people
        people.append(add(Entity(f"person/{i}", "person", name, (alias,), (first, last), seen)))
    for person in people:
        facts.append(Fact(person.id, "citizenship", rng.choice(countries).id))
        facts.append(Fact(person.id, "birthplace", rng.choice(cities).id))
        facts.append(Fact(person.id, "employer", rng.choice(known_companies).id))
        facts.append(Fact(person.id, "profession", rng.choice(PROFESSIONS)))

    # Topics with an opinion, drawn from an even pool of sentiments: about half each.
    topic_cores = forge.pool(config.topics, 2)
    sentiments = ["positive", "negative"] * (config.topics // 2 + 1)
    rng.shuffle(sentiments)
    topics = [
        Topic(f"{core} {rng.choice(TOPIC_KINDS)}", sentiments[i])
        for i, core in enumerate(topic_cores)
    ]

    known_relations = {r.name for r in RELATIONS}
    assert all(f.relation in known_relations for f in facts)
    return World(
        seed=config.seed,
        entities=entities,
        facts=facts,
        topics=topics,
        unrelated=_unrelated_questions(rng, config.arithmetic_questions),
        values={"profession": list(PROFESSIONS), "industry": list(INDUSTRIES),
                "language": sorted(set(languages))},
    )
