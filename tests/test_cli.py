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
