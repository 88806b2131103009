"""The one in-memory form every edit data set is read into, whatever its file format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TASKS: tuple[str, ...] = ("counterfact", "recent", "convsent", "zsre")

# Reads the sentiment an answer expresses ("positive", "negative", or None when unclear).
SentimentJudge = Callable[[str], str | None]


@dataclass(frozen=True)
class Probe:
    """A prompt and the answer expected after it (teacher-forced as prompt + " " + answer)."""

    prompt: str
    answer: str


@dataclass(frozen=True)
class EditCase:
    """One edit case of a data set: the edit request with everything needed to measure it.

    ``locality`` and ``portability`` map a category name (KnowEdit's, e.g.
    ``Relation_Specificity`` or ``Subject_Aliasing``) to its probes. For ConvSent,
    ``answers`` holds every answer phrasing of the target sentiment and ``opposite_answers``
    those of the sentiment being replaced.
    """

    task: str
    subject: str
    prompt: str
    target_new: str
    ground_truth: str | None = None
    rephrases: tuple[str, ...] = ()
    locality: dict[str, tuple[Probe, ...]] = field(default_factory=dict)
    portability: dict[str, tuple[Probe, ...]] = field(default_factory=dict)
    sentiment: str | None = None
    answers: tuple[str, ...] = ()
    opposite_answers: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)


def carries_sentiment(answer: str, record: EditCase, judge: SentimentJudge | None = None
                      ) -> bool:
    """Whether a ConvSent answer expresses the record's new sentiment: read by ``judge`` when
    one is given, else by the record's own labelled answers (the answer opens with the
    first sentence of one of them)."""
    if judge is not None:
        return judge(answer) == record.sentiment
    return any(answer.strip().startswith(a.split(".")[0].strip()) for a in record.answers)
