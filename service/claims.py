"""Which facts an edit sets, and the one rule about them: a fact is set by one active edit.

An edit claims its prompt and, when it names both, its subject's relation. Storing an edit
supersedes (rolls back, in the same atomic step) any active edit that claims one of the
same facts; a batch that sets one fact twice is refused before anything is computed, since
it cannot say which of its own edits should win.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import ServiceError
from .schemas import EditRecord


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def claims(record: EditRecord) -> tuple[str, ...]:
    """The facts ``record`` sets: its prompt, and its subject's relation when both are named."""
    out = ["prompt:" + _normal(record.prompt)]
    if record.relation and record.subject:
        out.append(f"fact:{_normal(record.subject)}|{_normal(record.relation)}")
    return tuple(out)


def refuse_conflicts(records: Sequence[EditRecord]) -> None:
    """422 ``conflicting_batch`` when two edits of one request set the same fact."""
    claimed: dict[str, int] = {}
    for i, record in enumerate(records):
        for claim in claims(record):
            if claim in claimed:
                raise ServiceError(422, "conflicting_batch", f"edits {claimed[claim]} and {i} "
                                   "of the batch set the same fact; send one of them",
                                   {"edits": [claimed[claim], i]})
            claimed[claim] = i
