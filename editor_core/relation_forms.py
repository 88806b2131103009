"""The wordings of each relation an editor knows, so that an edit sent in one wording also
holds in the others.

An edit fitted on the one prompt a client sent often fails on a question about the same
fact (and the other way round): the change learnt for one context does not carry to
another, and a question's routing key may fall under the threshold. When a request names
its subject and a relation this catalogue knows, the service derives the relation's other
wordings for that subject: they become routing keys of the edit and rows of its fit, so the
edit is made to hold on statements and questions alike. Derived wordings are never a
reason to refuse an edit: only the prompt and the rephrases the client sent must hold.
More keys also reach further, so the other relations' wordings for the same subject become
the edit's *contrast* keys: it fires only where a query is closer to its own keys than to
every one of them.

The catalogue ships beside the editor (``relations.json``: relation → the kind of subject
it asks about and its templates, with ``{s}`` for the subject). It lists the wordings the
editor was trained on, never the ones an evaluation holds out. Contrast keys come from the
relations asked of the same kind of subject only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RELATION_FORMS_FILE", "RelationForms"]

RELATION_FORMS_FILE = "relations.json"


@dataclass(frozen=True)
class RelationForms:
    """relation name → its wordings, each a template with ``{s}`` for the subject; and
    relation name → the kind of subject it asks about (relations without one contrast with
    every other relation)."""

    forms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    subject_kinds: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for relation, templates in self.forms.items():
            for template in templates:
                if template.count("{s}") != 1:
                    raise ValueError(f"relation {relation!r}: the template {template!r} must "
                                     "name the subject once, as {s}")

    def derive(self, relation: str | None, subject: str | None, sent: Sequence[str]
               ) -> tuple[str, ...]:
        """The relation's wordings for ``subject``, less those already ``sent`` (compared
        without case and surrounding space); none for an unknown relation or no subject."""
        if not relation or not subject or not subject.strip():
            return ()
        templates = self.forms.get(relation.strip().lower(), ())
        seen = {s.strip().lower() for s in sent}
        out: list[str] = []
        for template in templates:
            prompt = template.replace("{s}", subject.strip())
            if prompt.lower() not in seen:
                seen.add(prompt.lower())
                out.append(prompt)
        return tuple(out)

    def contrast(self, relation: str | None, subject: str | None) -> tuple[str, ...]:
        """Other questions about the same subject: the first statement and the first
        question of every other relation, for ``subject``. An edit of one relation must not
        fire where a query is closer to these than to its own wordings."""
        if not relation or not subject or not subject.strip():
            return ()
        own = relation.strip().lower()
        if own not in self.forms:
            return ()
        kind = self.subject_kinds.get(own)
        out: list[str] = []
        for name, templates in sorted(self.forms.items()):
            if name == own or (kind is not None and self.subject_kinds.get(name, kind) != kind):
                continue
            for asks in (False, True):
                form = next((t for t in templates if t.rstrip().endswith("?") == asks), None)
                if form is not None:
                    out.append(form.replace("{s}", subject.strip()))
        return tuple(out)

    def save(self, folder: str | Path) -> None:
        data = {name: {"subject": self.subject_kinds.get(name), "forms": list(templates)}
                for name, templates in sorted(self.forms.items())}
        (Path(folder) / RELATION_FORMS_FILE).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> RelationForms:
        """The catalogue an editor folder ships (an empty one when it ships none)."""
        file = Path(folder) / RELATION_FORMS_FILE
        if not file.exists():
            return cls()
        data = json.loads(file.read_text())
        return cls({name.lower(): tuple(entry["forms"]) for name, entry in data.items()},
                   {name.lower(): entry["subject"] for name, entry in data.items()
                    if entry.get("subject")})
