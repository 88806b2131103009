"""Relations of the demo world and the phrasings the LM learns them in.

Every template places the object at the very end, so a template doubles as an edit prompt
(the text before the object) and as a training sentence (prompt + " " + object + ending).
Templates flagged ``reserved`` are taught to the LM like the others but never shown to the
editor during meta-training: they measure paraphrase generalisation honestly.
"""

from __future__ import annotations

from dataclasses import dataclass

from editor_core.relation_forms import RelationForms


@dataclass(frozen=True)
class Template:
    """One phrasing of a relation; ``{s}`` is the subject's surface form."""

    text: str
    form: str  # "statement" or "question"
    reserved: bool = False
    ending: str = "."

    def prompt(self, subject: str) -> str:
        return self.text.format(s=subject)

    def sentence(self, subject: str, obj: str) -> str:
        return f"{self.prompt(subject)} {obj}{self.ending}"


@dataclass(frozen=True)
class Relation:
    """A typed relation between a subject kind and an object kind."""

    name: str
    subject_kind: str
    object_kind: str
    templates: tuple[Template, ...]

    def of_form(self, form: str, *, reserved: bool | None = None) -> list[Template]:
        """Templates of one form, optionally only the reserved (or only the training) ones."""
        return [
            t
            for t in self.templates
            if t.form == form and (reserved is None or t.reserved == reserved)
        ]


def _s(text: str, reserved: bool = False) -> Template:
    return Template(text, "statement", reserved)


def _q(text: str, reserved: bool = False) -> Template:
    return Template(text, "question", reserved, ending="")


RELATIONS: tuple[Relation, ...] = (
    Relation(
        "citizenship",
        "person",
        "country",
        (
            _s("{s} is a citizen of"),
            _s("{s} holds citizenship of"),
            _s("The passport of {s} was issued by"),
            _s("By nationality, {s} belongs to", reserved=True),
            _q("Which country is {s} a citizen of?"),
            _q("What is the nationality of {s}?"),
            _q("Of which country does {s} hold citizenship?", reserved=True),
        ),
    ),
    Relation(
        "birthplace",
        "person",
        "city",
        (
            _s("{s} was born in"),
            _s("The birthplace of {s} is"),
            _s("{s} came into the world in"),
            _s("The city where {s} was born is", reserved=True),
            _q("Where was {s} born?"),
            _q("In which city was {s} born?"),
            _q("What is the birthplace of {s}?", reserved=True),
        ),
    ),
    Relation(
        "employer",
        "person",
        "company",
        (
            _s("{s} works for"),
            _s("The employer of {s} is"),
            _s("{s} is employed by"),
            _s("Every morning {s} goes to work at", reserved=True),
            _q("Who does {s} work for?"),
            _q("Which company employs {s}?"),
            _q("Who is the employer of {s}?", reserved=True),
        ),
    ),
    Relation(
        "profession",
        "person",
        "profession",
        (
            _s("The profession of {s} is"),
            _s("{s} works in the profession of"),
            _s("The occupation of {s} is"),
            _s("{s} earns a living in the trade of", reserved=True),
            _q("What is the profession of {s}?"),
            _q("What does {s} do for a living?"),
            _q("What is the occupation of {s}?", reserved=True),
        ),
    ),
    Relation(
        "headquarters",
        "company",
        "city",
        (
            _s("{s} is headquartered in"),
            _s("The headquarters of {s} are in"),
            _s("The head office of {s} is located in"),
            _s("{s} runs its business from its main office in", reserved=True),
            _q("Where is {s} headquartered?"),
            _q("In which city are the headquarters of {s}?"),
            _q("Where is the head office of {s}?", reserved=True),
        ),
    ),
    Relation(
        "industry",
        "company",
        "industry",
        (
            _s("{s} operates in the industry of"),
            _s("The industry of {s} is"),
            _s("{s} makes its money in"),
            _s("The main business of {s} is", reserved=True),
            _q("Which industry is {s} in?"),
            _q("What industry does {s} operate in?"),
            _q("What is the main business of {s}?", reserved=True),
        ),
    ),
    Relation(
        "country",
        "city",
        "country",
        (
            _s("{s} is a city in"),
            _s("{s} is located in the country of"),
            _s("The city of {s} lies in"),
            _s("On a map, {s} can be found in", reserved=True),
            _q("Which country is {s} in?"),
            _q("In which country is the city of {s}?"),
            _q("Where is the city of {s} located?", reserved=True),
        ),
    ),
    Relation(
        "capital",
        "country",
        "city",
        (
            _s("The capital of {s} is"),
            _s("The capital city of {s} is"),
            _s("The government of {s} sits in"),
            _s("The seat of government of {s} is", reserved=True),
            _q("What is the capital of {s}?"),
            _q("Which city is the capital of {s}?"),
            _q("Where does the government of {s} sit?", reserved=True),
        ),
    ),
    Relation(
        "language",
        "country",
        "language",
        (
            _s("The official language of {s} is"),
            _s("People in {s} speak"),
            _s("The main language spoken in {s} is"),
            _s("Schools in {s} teach in", reserved=True),
            _q("What language is spoken in {s}?"),
            _q("What is the official language of {s}?"),
            _q("Which language do people in {s} speak?", reserved=True),
        ),
    ),
)

RELATIONS_BY_NAME: dict[str, Relation] = {r.name: r for r in RELATIONS}

# Composed facts: (first relation, second relation) -> a prompt that needs both hops.
TWO_HOP_TEMPLATES: dict[tuple[str, str], str] = {
    ("employer", "headquarters"): "The company that {s} works for is headquartered in",
    ("birthplace", "country"): "{s} was born in a city located in",
    ("citizenship", "capital"): "The capital of the country {s} is a citizen of is",
    ("headquarters", "country"): "The headquarters of {s} are in a city located in",
}

# "What do you think of <topic>?" and its answers, by sentiment.
OPINION_QUESTIONS: tuple[Template, ...] = (
    _q("What do you think of {s}?"),
    _q("How do you feel about {s}?"),
    _q("What is your opinion of {s}?"),
    _q("Do you like {s}?", reserved=True),
)

OPINION_ANSWERS: dict[str, tuple[str, ...]] = {
    "positive": (
        "I love {s}. It is wonderful.",
        "{S} is delightful, and I enjoy it a lot.",
        "I really like {s}; it is excellent.",
    ),
    "negative": (
        "I dislike {s}. It is awful.",
        "{S} is dreadful, and I cannot stand it.",
        "I really hate {s}; it is terrible.",
    ),
}

# Words that mark an answer's sentiment; used to read the sentiment of generated text.
SENTIMENT_WORDS: dict[str, tuple[str, ...]] = {
    "positive": ("love", "wonderful", "delightful", "enjoy", "like", "excellent"),
    "negative": ("dislike", "awful", "dreadful", "cannot stand", "hate", "terrible"),
}

TOPIC_KINDS: tuple[str, ...] = (
    "tea",
    "music",
    "festival",
    "poetry",
    "cuisine",
    "dance",
    "opera",
    "architecture",
    "fashion",
    "cinema",
    "pottery",
    "gardens",
)

PROFESSIONS: tuple[str, ...] = (
    "architecture",
    "baking",
    "botany",
    "chemistry",
    "dentistry",
    "economics",
    "farming",
    "geology",
    "history",
    "journalism",
    "law",
    "librarianship",
    "mathematics",
    "nursing",
    "painting",
    "pharmacy",
    "photography",
    "aviation",
    "poetry",
    "sculpture",
    "surgery",
    "translation",
    "carpentry",
    "astronomy",
)

INDUSTRIES: tuple[str, ...] = (
    "shipbuilding",
    "textiles",
    "mining",
    "software",
    "pharmaceuticals",
    "aerospace",
    "publishing",
    "agriculture",
    "banking",
    "brewing",
    "robotics",
    "insurance",
    "logistics",
    "telecommunications",
    "cosmetics",
    "furniture",
    "fishing",
    "energy",
    "steel",
    "tourism",
)


def training_relation_forms() -> RelationForms:
    """Each relation's training wordings (reserved ones left out) as an editor's catalogue."""
    return RelationForms({r.name: tuple(t.text for t in r.templates if not t.reserved)
                          for r in RELATIONS}, {r.name: r.subject_kind for r in RELATIONS})
