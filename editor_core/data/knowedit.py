"""Readers for edit data sets in the public KnowEdit / MEND layouts.

The same functions read the demo world's exports and real KnowEdit files. They accept the
layouts' known rough edges: ``ground_truth`` given as a string, a list, or a list of alias
lists; missing optional fields; ``rephrase`` as a string or a list; whitespace around
answers. A record that cannot be an edit (no prompt, an empty target) is refused with a
reason, never silently turned into a bad edit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .records import TASKS, EditCase, Probe

logger = logging.getLogger(__name__)

# ``type`` values of multi-task files and the task each stands for.
TYPE_TO_TASK = MappingProxyType({"counterfact": "counterfact", "wikirecent": "recent",
                                 "recent": "recent", "convsent": "convsent", "zsre": "zsre"})


class RecordError(ValueError):
    """A record that cannot be read as an edit; the message says which and why."""


def first_answer(value: Any) -> str | None:
    """The first answer in a KnowEdit ``ground_truth`` of any nesting, stripped.

    ``"Paris"``, ``["Paris", "City of Light"]`` and ``[["Paris", "City of Light"]]`` all give
    ``"Paris"``; ``None``, ``""`` and empty lists give None.
    """
    while isinstance(value, (list, tuple)):
        if not value:
            return None
        value = value[0]
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _probes(entries: Any) -> tuple[Probe, ...]:
    """Probes from a KnowEdit category: a list of {prompt, ground_truth} or a dict of lists."""
    if entries is None:
        return ()
    if isinstance(entries, Mapping):  # {"prompt": [...], "ground_truth": [...]}
        prompts = entries.get("prompt") or []
        answers = entries.get("ground_truth") or []
        if isinstance(prompts, str):
            prompts, answers = [prompts], [answers]
        entries = [{"prompt": p, "ground_truth": a} for p, a in zip(prompts, answers)]
    out = []
    for entry in entries:
        prompt = (entry.get("prompt") or "").strip()
        answer = first_answer(entry.get("ground_truth"))
        if prompt and answer:
            out.append(Probe(prompt, answer))
    return tuple(out)


def _categories(block: Any) -> dict[str, tuple[Probe, ...]]:
    if not isinstance(block, Mapping):
        return {}
    cats = {name: _probes(entries) for name, entries in block.items()}
    return {name: probes for name, probes in cats.items() if probes}


def _rephrases(record: Mapping[str, Any]) -> tuple[str, ...]:
    value = record.get("paraphrases") or record.get("rephrase") or []
    if isinstance(value, str):
        value = [value]
    return tuple(v.strip() for v in value if isinstance(v, str) and v.strip())


def _required(record: Mapping[str, Any], *keys: str) -> str:
    for key in keys:
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    raise RecordError(f"missing or empty field {' / '.join(repr(k) for k in keys)}")


def record_from_knowedit(record: Mapping[str, Any], task: str) -> EditCase:
    """A KnowEdit prompt-style record (CounterFact, Recent, ConvSent edit form)."""
    prompt = _required(record, "prompt", "text")
    target = _required(record, "target_new", "labels")
    subject = (record.get("subject") or record.get("concept") or "").strip()
    if not subject:
        raise RecordError("missing or empty field 'subject'")
    return EditCase(
        task=task,
        subject=subject,
        prompt=prompt,
        target_new=target,
        ground_truth=first_answer(record.get("ground_truth")),
        rephrases=_rephrases(record),
        locality=_categories(record.get("locality")),
        portability=_categories(record.get("portability")),
        sentiment=record.get("sentiment"),
        answers=tuple(record.get("target_answers") or ([target] if task == "convsent" else [])),
        opposite_answers=tuple(record.get("opposite_answers") or ()),
        meta={k: record[k] for k in ("relation", "case_id") if k in record},
    )


def record_from_zsre(record: Mapping[str, Any]) -> EditCase:
    """A MEND-format zsRE record (``src``/``alt``/``answers``/``loc``/``loc_ans``)."""
    prompt = _required(record, "src")
    target = (record.get("alt") or "").strip()
    if not target:
        raise RecordError("empty target: field 'alt' has no new answer to edit in")
    subject = _required(record, "subject")
    locality = _categories(record.get("locality"))
    loc, loc_ans = (record.get("loc") or "").strip(), first_answer(record.get("loc_ans"))
    if loc and loc_ans:
        locality = {"NQ": (Probe(loc, loc_ans),), **locality}
    portability: dict[str, tuple[Probe, ...]] = {}
    port = record.get("portability")
    if isinstance(port, Mapping) and port.get("New Question") and port.get("New Answer"):
        portability["New_Question"] = (
            Probe(str(port["New Question"]).strip(), str(port["New Answer"]).strip()),)
    return EditCase(
        task="zsre",
        subject=subject,
        prompt=prompt,
        target_new=target,
        ground_truth=first_answer(record.get("answers")),
        rephrases=_rephrases(record),
        locality=locality,
        portability=portability,
        meta={k: record[k] for k in ("relation", "case_id") if k in record},
    )


def records_from_convsent_topic(record: Mapping[str, Any], index: int) -> EditCase:
    """A ConvSent topic in the ``ent``/``pos``/``neg`` form, edited towards one sentiment.

    Such files carry no edit direction; the sentiment alternates with the record index so a
    file yields a balanced, deterministic set of edits.
    """
    topic = _required(record, "ent")
    pos = tuple(a.strip() for a in record.get("pos") or [] if a.strip())
    neg = tuple(a.strip() for a in record.get("neg") or [] if a.strip())
    if not pos or not neg:
        raise RecordError("a ConvSent topic needs both 'pos' and 'neg' answers")
    sentiment = "positive" if index % 2 == 0 else "negative"
    answers, opposite = (pos, neg) if sentiment == "positive" else (neg, pos)
    return EditCase(task="convsent", subject=topic, prompt=f"What do you think of {topic}?",
                      target_new=answers[0], sentiment=sentiment, answers=answers,
                      opposite_answers=opposite)


def detect_task(record: Mapping[str, Any]) -> str:
    """The task a record belongs to, from its ``type`` field or its layout."""
    if "type" in record:
        kind = str(record["type"]).lower()
        if kind not in TYPE_TO_TASK:
            raise RecordError(f"unknown task type {record['type']!r}; known: "
                              f"{sorted(TYPE_TO_TASK)}")
        return TYPE_TO_TASK[kind]
    if "src" in record:
        return "zsre"
    if "ent" in record and ("pos" in record or "neg" in record):
        return "convsent"
    if "sentiment" in record or "target_answers" in record:
        return "convsent"
    if "ground_truth" in record and first_answer(record.get("ground_truth")):
        return "counterfact"
    return "recent"


def parse_records(raw: Iterable[Mapping[str, Any]], task: str | None = None, *,
                  strict: bool = False) -> list[EditCase]:
    """Records of any supported layout; bad ones raise (strict) or are skipped with a warning."""
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {list(TASKS)}")
    out: list[EditCase] = []
    for i, record in enumerate(raw):
        try:
            if not isinstance(record, Mapping):
                raise RecordError("not a JSON object")
            kind = task or detect_task(record)
            if "src" in record:
                out.append(record_from_zsre(record))
            elif "ent" in record:
                out.append(records_from_convsent_topic(record, i))
            else:
                out.append(record_from_knowedit(record, kind))
        except RecordError as err:
            if strict:
                raise RecordError(f"record {i}: {err}") from None
            logger.warning("skipping record %d: %s", i, err)
    return out


def load_edit_records(path: str | Path, task: str | None = None, *,
                      strict: bool = False) -> list[EditCase]:
    """Read a KnowEdit / MEND / multi-task JSON (array) or JSON Lines file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        raw = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        raw = json.loads(text)
        if isinstance(raw, Mapping):
            raw = [raw]
    return parse_records(raw, task, strict=strict)
