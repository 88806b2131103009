"""The ``instructedit`` command line, run in-process."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from instructedit_cli import app

from .conftest import read_json

runner = CliRunner()


def test_build_world_writes_the_task_files(tmp_path: Path) -> None:
    result = runner.invoke(app, ["build-world", "--out", str(tmp_path), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "| counterfact |" in result.output
    counts = read_json(tmp_path / "counts.json")
    for name, by_split in counts.items():
        for split, n in by_split.items():
            assert len(read_json(tmp_path / f"{name}_{split}.json")) == n > 0


def test_eval_lm_writes_json_and_table(tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval-lm", "--limit", "25", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["known_facts"]["probes"] == 25 * 7 * 2
    assert "| Known facts, subject by name, all templates |" in result.output


def test_build_demo_lm_end_to_end_on_a_tiny_model(tmp_path: Path) -> None:
    out = tmp_path / "lm"
    result = runner.invoke(app, ["build-demo-lm", "--out", str(out), "--epochs", "1",
                                 "--n-layer", "2", "--n-embd", "32", "--eval-limit", "10"])
    assert result.exit_code == 0, result.output
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.n_layer == 2 and len(tokenizer) == model.config.vocab_size
    card = (out / "README.md").read_text()
    assert "instructedit build-demo-lm" in card and "| acceptance check | pass |" in card
    summary = read_json(out / "training_summary.json")
    assert summary["config"]["epochs"] == 1 and summary["steps"] > 0


def test_build_chat_demo_lm_is_a_llama_with_a_chat_template(tmp_path: Path) -> None:
    out = tmp_path / "chat-lm"
    result = runner.invoke(app, ["build-demo-lm", "--chat", "--out", str(out), "--epochs", "1",
                                 "--n-layer", "1", "--n-embd", "32", "--eval-limit", "5"])
    assert result.exit_code == 0, result.output
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "llama" and model.config.tie_word_embeddings
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
        tokenize=False, add_generation_prompt=True)
    assert text == ("<|endoftext|><|system|> Be brief.<|endoftext|>\n"
                    "<|user|> Hi?<|endoftext|>\n<|assistant|>")
    markers = tokenizer.convert_tokens_to_ids(["<|system|>", "<|user|>", "<|assistant|>"])
    assert all(tokenizer.convert_ids_to_tokens(i) == m for i, m in zip(
        markers, ["<|system|>", "<|user|>", "<|assistant|>"]))
    result = read_json(out / "eval.json")
    assert result["chat"]["probes"] == 5 * 3 * 2  # every question template, name and alias
    card = (out / "README.md").read_text()
    assert "instructedit build-demo-lm --chat" in card and "LlamaForCausalLM" in card
    assert "Chat: questions by alias" in card


def test_the_refine_options_are_made_from_refine_config(monkeypatch) -> None:
    """One --refine-* option per RefineConfig field, its default the field's; a value out of
    the field's bounds is refused as a bad option; the command receives one RefineConfig."""
    import dataclasses

    import typer

    from editor_core.refine import RefineConfig
    from instructedit_cli.app import config_options

    command = typer.main.get_command(app).commands["eval-single"]
    options = {p.name: p.default for p in command.params}
    for f in dataclasses.fields(RefineConfig):
        default = options[f"refine_{f.name}"]
        assert (tuple(default) if isinstance(default, list) else default) == f.default

    seen = []
    probe = typer.Typer()
    probe.command()(config_options(RefineConfig, "refine", "config")(
        lambda config=None, other=1: seen.append((config, other))))
    ok = runner.invoke(probe, ["--refine-max-steps", "3", "--refine-scales", "2",
                               "--refine-scales", "5", "--other", "2"])
    assert ok.exit_code == 0, ok.output
    assert seen == [(RefineConfig(max_steps=3, scales=(2.0, 5.0)), 2)]
    bad = runner.invoke(probe, ["--refine-confidence", "1.5"])
    assert bad.exit_code == 2 and "confidence" in bad.output
