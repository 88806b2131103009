"""KnowEdit / MEND readers on the layouts' rough edges and on real zsRE records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from editor_core.data import RecordError, first_answer, load_edit_records, parse_records

from .conftest import SHARED_DATA, read_json


@pytest.mark.parametrize("value, expected", [
    ("Paris", "Paris"),
    ("  Paris ", "Paris"),
    (["Paris", "City of Light"], "Paris"),
    ([["Paris", "City of Light"], ["Lutetia"]], "Paris"),
    ([], None), ([[]], None), ("", None), (None, None), ("   ", None),
])
def test_ground_truth_nesting_is_normalised(value, expected) -> None:
    assert first_answer(value) == expected


def _counterfact(**over):
    record = {
        "subject": "Leo Arons", "prompt": "The place of death of Leo Arons is",
        "target_new": "Berlin", "ground_truth": "Munich",
        "portability": {"Subject_Aliasing": [{"prompt": "Martin Arons died in",
                                              "ground_truth": [["Berlin", "DE-BE"]]}]},
        "locality": {"Relation_Specificity": [{"prompt": "The father of Leo Arons is",
                                               "ground_truth": ["Albert Arons"]}],
                     "Forgetfulness": [{"prompt": "Leo Arons, born in", "ground_truth": "Posen"}]},
    }
    record.update(over)
    return record


def test_knowedit_record_fields_and_every_nesting_of_entries() -> None:
    (r,) = parse_records([_counterfact()], "counterfact", strict=True)
    assert (r.subject, r.prompt, r.target_new, r.ground_truth) == (
        "Leo Arons", "The place of death of Leo Arons is", "Berlin", "Munich")
    assert r.portability["Subject_Aliasing"][0].answer == "Berlin"
    assert r.locality["Relation_Specificity"][0].answer == "Albert Arons"
    assert r.locality["Forgetfulness"][0].answer == "Posen"
    assert r.rephrases == ()


def test_recent_record_without_ground_truth_or_rephrase() -> None:
    raw = _counterfact(rephrase="Leo Arons passed away in")
    del raw["ground_truth"]
    (r,) = parse_records([raw], strict=True)
    assert r.task == "recent" and r.ground_truth is None
    assert r.rephrases == ("Leo Arons passed away in",)


def test_locality_given_as_a_dict_of_lists_is_read() -> None:
    raw = _counterfact(locality={"Relation_Specificity": {
        "prompt": ["a is", "b is"], "ground_truth": [["x"], "y"]}})
    (r,) = parse_records([raw], "counterfact", strict=True)
    assert [p.answer for p in r.locality["Relation_Specificity"]] == ["x", "y"]


@pytest.mark.parametrize("field, value, message", [
    ("target_new", "", "target_new"),
    ("target_new", "   ", "target_new"),
    ("prompt", None, "prompt"),
    ("subject", "", "subject"),
])
def test_unusable_records_are_refused_with_the_reason(field, value, message) -> None:
    raw = _counterfact(**{field: value})
    with pytest.raises(RecordError, match=message):
        parse_records([raw], "counterfact", strict=True)
    assert parse_records([raw, _counterfact()], "counterfact") != []  # lenient: skipped


def test_lenient_loading_skips_only_the_bad_record() -> None:
    records = parse_records([_counterfact(), _counterfact(target_new=""), _counterfact()],
                            "counterfact")
    assert len(records) == 2


def test_unknown_task_type_is_an_error() -> None:
    with pytest.raises(RecordError, match="unknown task type"):
        parse_records([{"type": "bogus", **_counterfact()}], strict=True)
    with pytest.raises(ValueError, match="unknown task"):
        parse_records([_counterfact()], "bogus")


def test_real_zsre_records_load_with_their_rough_edges() -> None:
    path = SHARED_DATA / "zsre_real_sample.json"
    raw = read_json(path)
    records = load_edit_records(path)
    empty = [i for i, r in enumerate(raw) if not r["alt"].strip()]
    assert empty and len(records) == len(raw) - len(empty)
    with pytest.raises(RecordError, match=rf"record {empty[0]}: empty target"):
        load_edit_records(path, strict=True)
    for r, src in zip(records, [x for x in raw if x["alt"].strip()]):
        assert r.task == "zsre"
        assert r.prompt == src["src"].strip()
        assert r.target_new == src["alt"].strip() and r.target_new == r.target_new.strip()
        assert r.ground_truth == src["answers"][0].strip()
        assert r.locality["NQ"][0].prompt.startswith("nq question: ")
    # Non-ASCII text survives as written.
    assert any(any(ord(c) > 127 for c in r.prompt + r.target_new) for r in records)


def test_convsent_topic_form_alternates_sentiment() -> None:
    raw = [{"ent": "pizza", "pos": ["I love pizza."], "neg": ["Pizza is awful."]},
           {"ent": "rain", "pos": ["Rain is lovely."], "neg": ["I hate rain."]}]
    a, b = parse_records(raw, strict=True)
    assert (a.sentiment, a.target_new) == ("positive", "I love pizza.")
    assert (b.sentiment, b.target_new, b.opposite_answers) == (
        "negative", "I hate rain.", ("Rain is lovely.",))
    with pytest.raises(RecordError, match="both"):
        parse_records([{"ent": "x", "pos": ["a"], "neg": []}], strict=True)


def test_json_lines_and_single_object_files(tmp_path: Path) -> None:
    jl = tmp_path / "edits.jsonl"
    jl.write_text("\n".join(json.dumps(_counterfact()) for _ in range(3)) + "\n")
    assert len(load_edit_records(jl, "counterfact")) == 3
    one = tmp_path / "one.json"
    one.write_text(json.dumps(_counterfact()))
    assert len(load_edit_records(one, "counterfact")) == 1
