"""The service-view lifelong evaluation on the demo LM and editor: the combinations side by
side on one stream, exclusions, each edit alone, and the rollback check."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from editor_core.checkpoint import load_editor, load_routing
from editor_lab.evaluation.service_view import StreamSettings, evaluate_stream, stream_table
from editor_lab.world import World
from editor_lab.world.stream import asks_edited_fact, lifelong_stream
from service.settings import DEMO_EDITOR_PATH, DEMO_LM_PATH


@pytest.fixture(scope="module")
def result(world: World, exported: Path):
    model = AutoModelForCausalLM.from_pretrained(DEMO_LM_PATH).eval()
    tokenizer = AutoTokenizer.from_pretrained(DEMO_LM_PATH)
    editor = load_editor(DEMO_EDITOR_PATH, model, tokenizer, basis="pristine")
    stream = lifelong_stream(world, exported, 12, seed=3)
    settings = StreamSettings((4, 12), sample=4, seed=3, combinations=("memory", "ridge", "sum"),
                              alone_tolerances=(0.01,), removal_at=12, removal_share=0.25)
    return evaluate_stream(editor, load_routing(DEMO_EDITOR_PATH), stream, settings,
                           asks_edited_fact), stream


def test_every_combination_is_measured_at_every_count(result) -> None:
    res, _ = result
    assert set(res.figures) == {"memory", "ridge", "sum"}
    for name, by_count in res.figures.items():
        assert list(by_count) == ["4", "12"]
        for n, f in by_count.items():
            assert f["edits"] == int(n) and f["sampled"] == 4
            for key in ("reliability", "paraphrase", "teacher_forced_reliability",
                        "neighbour_locality", "random_locality"):
                assert 0.0 <= f[key] <= 1.0
            assert (f["routed_to_own_edit"] is None) == (name != "memory")


def test_the_memory_routes_each_prompt_to_its_own_edit_and_keeps_locality(result) -> None:
    memory = result[0].figures["memory"]
    assert all(f["routed_to_own_edit"] == 1.0 for f in memory.values())
    assert all(f["random_locality"] == 1.0 for f in memory.values())


def test_each_edit_alone_at_each_tolerance_paired_with_each_count(result) -> None:
    alone = result[0].alone
    assert list(alone) == ["4", "12"]
    for by_tolerance in alone.values():
        assert set(by_tolerance) == {"default", "0.01"}
        assert all(a["sampled"] == 4 for a in by_tolerance.values())


def test_rollback_matches_a_rebuilt_memory_and_all_rolled_back_is_pristine(result) -> None:
    removal = result[0].removal
    assert removal["active"] == 12 and removal["rolled_back"] == 3
    assert removal["answers_equal_rebuilt"] and removal["logprobs_equal_rebuilt"]
    assert removal["all_rolled_back_answers_equal_pristine"]
    assert removal["all_rolled_back_logprobs_equal_pristine"]
    assert removal["restored_digest_equal"]


def test_the_table_names_every_row(result) -> None:
    table = stream_table(result[0])
    for row in ("| memory | 4 |", "| ridge | 12 |", "| sum | 12 |",
                "| each alone, stored at 0.01 | 12 (4 sampled) |", "Rollback at 12 edits"):
        assert row in table


def test_settings_refuse_what_cannot_be_measured() -> None:
    with pytest.raises(ValueError, match="combinations"):
        StreamSettings((10,), combinations=("merged",))
    with pytest.raises(ValueError, match="checkpoint"):
        StreamSettings((10,), removal_at=20)
    with pytest.raises(ValueError, match="memory"):
        StreamSettings((10,), combinations=("ridge",), removal_at=10)


def test_single_edits_one_shot_judged_and_ftl_side_by_side(world: World) -> None:
    from editor_core.refine import RefineConfig
    from editor_lab.evaluation.single_view import evaluate_single, single_table
    from editor_lab.world.stream import unfamiliar_stream

    model = AutoModelForCausalLM.from_pretrained(DEMO_LM_PATH).eval()
    tokenizer = AutoTokenizer.from_pretrained(DEMO_LM_PATH)
    editor = load_editor(DEMO_EDITOR_PATH, model, tokenizer, basis="pristine")
    records = unfamiliar_stream(world, 4, seed=7)
    results = evaluate_single(editor, load_routing(DEMO_EDITOR_PATH), {"unfamiliar": records},
                              RefineConfig(), ftl_steps=2)
    arms = results["unfamiliar"]
    assert set(arms) == {"one-shot", "judged", "FT-L"}
    judged, one_shot = arms["judged"], arms["one-shot"]
    assert sum(judged["outcomes"].values()) == 4 == judged["edits"]
    assert judged["reliability"] >= one_shot["reliability"]
    assert judged["reliability"] == (judged["outcomes"].get("one_shot", 0)
                                     + judged["outcomes"].get("refined", 0)) / 4
    assert judged["random_locality"] == 1.0
    assert "| unfamiliar | judged | 4 |" in single_table(results)
