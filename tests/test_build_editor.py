"""``instructedit build-editor`` end to end on a tiny random LLaMA: the shipped folder, and
resuming from ``build.json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from instructedit_cli import app, build

from .conftest import read_json
from .tiny_models import bos_tokenizer, saved_tiny_model

REPO = Path(__file__).resolve().parent.parent
STAGES = ["train", "ship", "calibrate-routing", "relation-forms", "eval", "analyze", "card"]
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return saved_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama", bos_tokenizer())


@pytest.fixture(scope="module")
def small_data(exported: Path, tmp_path_factory) -> Path:
    """A few records of each fact task and split, in the world's KnowEdit-format files."""
    out = tmp_path_factory.mktemp("small-world")
    for task in ("counterfact", "recent", "zsre"):
        for split in ("train", "validation", "test"):
            name = f"{task}_{split}.json"
            (out / name).write_text(json.dumps(read_json(exported / name)[:6]))
    return out


def _config(folder: Path, model: Path, data: Path) -> Path:
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump({
        "model": str(model), "data_dir": str(data), "out_dir": str(folder / "run"),
        "tasks": ["counterfact", "recent"], "rank": 8, "accumulate": 2, "steps": 2,
        "val_every": 100, "val_edits": 2, "threads": 1, "lr": 1e-3}))
    return path


def _build(folder: Path, *extra: str):
    return runner.invoke(app, ["build-editor", "--config", str(folder / "train.yaml"),
                               "--out", str(folder / "shipped"), "--eval-limit", "2",
                               "--analysis-limit", "2", "--training-limit", "4", *extra])


def _stages(folder: Path) -> dict:
    return read_json(folder / "run" / "build.json")["stages"]


@pytest.fixture(scope="module")
def built(tiny_llama, small_data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("build")
    _config(folder, tiny_llama, small_data)
    result = _build(folder)
    assert result.exit_code == 0, result.output
    return folder


def test_the_build_ships_a_loadable_editor_with_routing_relations_and_card(
        built, tiny_llama) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from editor_core.checkpoint import load_editor, load_routing

    out = built / "shipped"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    editor = load_editor(out, model, AutoTokenizer.from_pretrained(tiny_llama))
    assert [w.name for w in editor.editable][-1] == "model.layers.3.mlp.down_proj.weight"
    assert load_routing(out).gate and editor.relation_forms.forms  # routing, relations
    evaluation = read_json(out / "eval.json")
    assert list(evaluation["results"]) == ["unedited", "InstructEdit"]
    assert list(evaluation["results"]["InstructEdit"]) == ["counterfact", "recent", "zsre"]
    assert {"analysis.json", "edit_regions.png", "training_curves.png"} <= {
        p.name for p in out.iterdir()}
    card = (out / "README.md").read_text()
    assert f"instructedit build-editor --config {built / 'train.yaml'}" in card
    assert "## Build" in card and "| calibrate-routing |" in card
    record = read_json(built / "run" / "build.json")
    assert list(record["stages"]) == STAGES
    assert record["total_seconds"] == pytest.approx(
        sum(s["seconds"] for s in record["stages"].values()), abs=0.1)


def test_a_rerun_skips_finished_stages_and_redoes_only_an_unrecorded_last_one(built) -> None:
    before = _stages(built)
    again = _build(built)
    assert again.exit_code == 0, again.output
    assert _stages(built) == before and "done in" not in again.output
    assert again.output.count(", skipped") == len(STAGES)

    record = read_json(built / "run" / "build.json")
    del record["stages"]["card"]
    (built / "run" / "build.json").write_text(json.dumps(record))
    resumed = _build(built)
    assert resumed.exit_code == 0, resumed.output
    after = _stages(built)
    assert {k: v for k, v in after.items() if k != "card"} == {
        k: v for k, v in before.items() if k != "card"}
    assert after["card"]["finished_at"] > before["card"]["finished_at"]
    assert resumed.output.count("done in") == 1 and "stage card done in" in resumed.output


def test_a_stage_whose_output_is_gone_runs_again_with_every_stage_after_it(built) -> None:
    before = _stages(built)
    (built / "run" / "analysis.json").unlink()
    result = _build(built)
    assert result.exit_code == 0, result.output
    after = _stages(built)
    assert [s for s in STAGES if after[s] != before[s]] == ["analyze", "card"]


def test_an_interrupted_build_resumes_at_the_stage_that_failed(
        tiny_llama, small_data, tmp_path, monkeypatch) -> None:
    _config(tmp_path, tiny_llama, small_data)

    def interrupted(b) -> None:
        raise RuntimeError("interrupted")

    monkeypatch.setattr(build, "eval_stage", interrupted)
    failed = _build(tmp_path)
    assert isinstance(failed.exception, RuntimeError)
    done = _stages(tmp_path)
    assert list(done) == ["train", "ship", "calibrate-routing", "relation-forms"]

    monkeypatch.undo()
    resumed = _build(tmp_path)
    assert resumed.exit_code == 0, resumed.output
    after = _stages(tmp_path)
    assert list(after) == STAGES and all(after[s] == done[s] for s in done)
    assert "stage eval done in" in resumed.output and "stage train done" not in resumed.output


def test_other_settings_need_restart_which_reruns_every_stage_but_resumes_training(
        built) -> None:
    before = _stages(built)
    refused = _build(built, "--eval-limit", "1")
    assert refused.exit_code == 2 and "eval_limit" in refused.output
    trained = (built / "run" / "log.jsonl").read_text()
    restarted = _build(built, "--eval-limit", "1", "--restart")
    assert restarted.exit_code == 0, restarted.output
    after = _stages(built)
    assert all(after[s]["finished_at"] > before[s]["finished_at"] for s in STAGES)
    train_rows = [r for r in (built / "run" / "log.jsonl").read_text().splitlines()
                  if '"kind": "train"' in r]
    assert len(train_rows) == trained.count('"kind": "train"')  # no step trained again
    assert read_json(built / "shipped" / "eval.json")["settings"]["limit"] == 1


def test_the_chat_editor_config_edits_the_mlp_of_the_last_three_llama_blocks() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from editor_core.specs import resolve_editable
    from editor_lab.training.config import load_train_config

    cfg = load_train_config(REPO / "configs" / "demo-chat-editor.yaml")
    assert (cfg.model, cfg.out_dir) == ("checkpoints/demo-chat-lm", "runs/demo-chat-editor")
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                         num_hidden_layers=6, num_attention_heads=4))
    names = [w.name for w in resolve_editable(model, cfg.editable, cfg.last_blocks)]
    assert names == [f"model.layers.{i}.mlp.{p}.weight" for i in (3, 4, 5)
                     for p in ("gate_proj", "up_proj", "down_proj")]
