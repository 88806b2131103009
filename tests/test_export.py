"""Exported edit data sets: real KnowEdit layouts, clean splits, honest paraphrase hold-out."""

from __future__ import annotations

from pathlib import Path

import pytest

from editor_core.data import load_edit_records
from editor_lab.world.corpus import LOCALITY_PREFIX
from editor_lab.world.export import SPLITS, TASK_RELATIONS
from editor_lab.world.templates import OPINION_QUESTIONS, RELATIONS

from .conftest import read_json

TASK_FILES = ("counterfact", "recent", "zsre", "convsent", "convsent_topics")


def _reserved_prompts_of(subject: str) -> set[str]:
    out = {t.prompt(subject) for r in RELATIONS for t in r.templates if t.reserved}
    return out | {q.prompt(subject) for q in OPINION_QUESTIONS if q.reserved}


@pytest.mark.parametrize("name", TASK_FILES)
def test_no_subject_in_two_splits(exported: Path, name: str) -> None:
    key = "ent" if name == "convsent_topics" else "subject"
    seen: dict[str, str] = {}
    for split in SPLITS:
        records = read_json(exported / f"{name}_{split}.json")
        assert records, (name, split)
        for r in records:
            assert seen.setdefault(r[key], split) == split, (name, r[key])


@pytest.mark.parametrize("name", TASK_FILES)
@pytest.mark.parametrize("split", SPLITS)
def test_every_exported_record_passes_the_loaders(exported: Path, name: str, split: str) -> None:
    raw = read_json(exported / f"{name}_{split}.json")
    records = load_edit_records(exported / f"{name}_{split}.json", strict=True)
    assert len(records) == len(raw)
    task = "convsent" if name.startswith("convsent") else name
    for r in records:
        assert r.task == task
        assert r.prompt and r.target_new and r.subject
        if task == "convsent":
            assert r.sentiment in {"positive", "negative"} and len(r.answers) >= 3
        else:
            assert r.rephrases and r.locality
        if task == "counterfact":
            assert r.ground_truth and r.ground_truth != r.target_new


def test_multitask_file_names_each_task_and_holds_out_zsre(exported: Path) -> None:
    raw = read_json(exported / "multitask_train.json")
    assert {r["type"] for r in raw} == {"counterfact", "wikirecent", "convsent"}
    records = load_edit_records(exported / "multitask_train.json", strict=True)
    assert {r.task for r in records} == {"counterfact", "recent", "convsent"}


def test_training_splits_never_use_reserved_templates(exported: Path) -> None:
    for name in ("counterfact", "recent", "zsre", "convsent"):
        for split in ("train", "validation"):
            for r in load_edit_records(exported / f"{name}_{split}.json"):
                reserved = _reserved_prompts_of(r.subject)
                assert r.prompt not in reserved
                assert not set(r.rephrases) & reserved, (name, r.subject)


def test_test_split_paraphrases_use_only_reserved_templates(exported: Path) -> None:
    for name in ("counterfact", "recent", "zsre", "convsent"):
        for r in load_edit_records(exported / f"{name}_test.json"):
            reserved = _reserved_prompts_of(r.subject)
            assert r.prompt not in reserved
            assert r.rephrases and set(r.rephrases) <= reserved, (name, r.subject)


def test_tasks_differ_in_more_than_wording(exported: Path, world) -> None:
    cf = load_edit_records(exported / "counterfact_test.json")
    recent = load_edit_records(exported / "recent_test.json")
    zsre = load_edit_records(exported / "zsre_test.json")
    by_name = {e.name: e for e in world.entities.values()}
    # CounterFact overrides a fact the LM knows; Recent inserts one about an unseen entity.
    assert all(by_name[r.subject].seen and r.ground_truth for r in cf)
    assert all(not by_name[r.subject].seen and r.ground_truth is None for r in recent)
    # ZsRE asks questions about relations the training tasks never edit.
    assert not set(TASK_RELATIONS["zsre"]) & set(TASK_RELATIONS["counterfact"])
    assert all(r.prompt.endswith("?") and r.meta["relation"] in TASK_RELATIONS["zsre"]
               for r in zsre)


def test_locality_and_portability_are_filled(exported: Path, world) -> None:
    cf = load_edit_records(exported / "counterfact_test.json")
    assert all({"Relation_Specificity", "Neighborhood", "Unrelated"} <= set(r.locality)
               for r in cf)
    assert all("Subject_Aliasing" in r.portability for r in cf)
    assert sum("Reasoning" in r.portability for r in cf) >= len(cf) // 2
    # Neighbour prompts name a different entity sharing part of the subject's name.
    r = cf[0]
    parts = set(r.subject.split())
    for probe in r.locality["Neighborhood"]:
        assert r.subject not in probe.prompt
        assert any(p in probe.prompt for p in parts)
    # Aliasing asks about the subject under its alias, expecting the new object.
    alias_probe = r.portability["Subject_Aliasing"][0]
    assert r.subject not in alias_probe.prompt and alias_probe.answer == r.target_new


def test_zsre_export_is_mend_format(exported: Path) -> None:
    raw = read_json(exported / "zsre_test.json")
    for r in raw:
        assert {"subject", "src", "alt", "answers", "rephrase", "loc", "loc_ans",
                "pred", "cond", "portability"} <= set(r)
        assert r["loc"].startswith(LOCALITY_PREFIX) and r["alt"] not in r["answers"]
        assert {"New Question", "New Answer"} <= set(r["portability"])
