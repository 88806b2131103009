"""The one in-memory form every edit data set is read into, whatever its file format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TASKS: tuple[str, ...] = ("counterfact", "recent", "convsent", "zsre")


@dataclass(frozen=True)
class Probe:
    """A prompt and the answer expected after it (teacher-forced as prompt + " " + answer)."""

    prompt: str
    answer: str


@dataclass(frozen=True)
class EditRecord:
    """One edit request with everything needed to measure it.

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
