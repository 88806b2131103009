"""Editable-weight specs per model family, and the instruction registry."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from editor_core.instructions import (
    INSTRUCTION_FORMAT,
    InstructionError,
    InstructionRegistry,
)
from editor_core.specs import EditableWeightError, default_editable_names, resolve_editable

from .tiny_models import FAMILIES, small_tokenizer, tiny_model

EXPECTED = {
    "gpt2": ["transformer.h.{i}.mlp.c_fc.weight", "transformer.h.{i}.mlp.c_proj.weight"],
    "gptj": ["transformer.h.{i}.mlp.fc_in.weight", "transformer.h.{i}.mlp.fc_out.weight"],
    "gpt_neox": ["gpt_neox.layers.{i}.mlp.dense_h_to_4h.weight",
                 "gpt_neox.layers.{i}.mlp.dense_4h_to_h.weight"],
    "llama": ["model.layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.up_proj.weight",
              "model.layers.{i}.mlp.down_proj.weight"],
}
EXPECTED["qwen2"] = EXPECTED["llama"]


@pytest.fixture(scope="module")
def vocab() -> int:
    return len(small_tokenizer())


@pytest.mark.parametrize("family", FAMILIES)
def test_default_editable_weights_are_the_last_three_blocks_mlps(family: str, vocab: int) -> None:
    model = tiny_model(family, vocab)
    names = default_editable_names(model)
    assert names == [p.format(i=i) for i in (1, 2, 3) for p in EXPECTED[family]]
    params = dict(model.named_parameters())
    for w in resolve_editable(model):
        stored = params[w.name].shape
        # Conv1D (GPT-2) stores (in, out); Linear stores (out, in).
        assert w.transposed == (family != "gpt2")
        assert stored == ((w.d_out, w.d_in) if w.transposed else (w.d_in, w.d_out))


def test_explicit_names_override_and_unknown_names_list_the_real_ones(vocab: int) -> None:
    model = tiny_model("gpt2", vocab)
    only = ["transformer.h.0.mlp.c_fc.weight"]
    assert [w.name for w in resolve_editable(model, only)] == only
    with pytest.raises(EditableWeightError) as err:
        resolve_editable(model, ["transformer.h.9.mlp.c_fc.weight"])
    assert "transformer.h.9.mlp.c_fc.weight" in str(err.value)
    assert "transformer.h.3.mlp.c_proj.weight" in str(err.value)  # lists what exists
    with pytest.raises(EditableWeightError, match="Embedding"):
        resolve_editable(model, ["transformer.wte.weight"])
    with pytest.raises(EditableWeightError, match="repeat"):
        resolve_editable(model, only * 2)


def test_unknown_family_needs_explicit_names(vocab: int) -> None:
    model = tiny_model("gpt2", vocab)
    model.config.model_type = "mystery"
    with pytest.raises(EditableWeightError, match="pass the parameter names"):
        default_editable_names(model)


def test_every_task_has_ten_descriptions_and_one_held_out() -> None:
    reg = InstructionRegistry()
    assert reg.names == ["counterfact", "recent", "convsent", "zsre"]
    for task in reg:
        assert len(set(task.descriptions)) >= 10 and task.title
        held = task.held_out_description()
        assert held not in task.training_descriptions()
        assert len(task.training_descriptions()) == len(task.descriptions) - 1


def test_instruction_format_and_description_choice() -> None:
    reg = InstructionRegistry()
    text = reg.render("counterfact", "The capital of Foxland is")
    task = reg.get("counterfact")
    assert text == INSTRUCTION_FORMAT.format(task="CounterFact",
                                             description=task.training_descriptions()[0],
                                             prompt="The capital of Foxland is")
    assert text.startswith("Task: CounterFact\nDescription: ")
    assert text.endswith("\nInput: The capital of Foxland is")
    held = reg.render("counterfact", "p", held_out=True)
    assert task.held_out_description() in held
    drawn = {reg.render("counterfact", "p", rng=random.Random(i)) for i in range(60)}
    assert len(drawn) == len(task.training_descriptions())
    assert not any(task.held_out_description() in d for d in drawn)
    free = reg.render("zsre", "Q?", "my own words {with braces}")
    assert "Description: my own words {with braces}\n" in free


def test_convsent_descriptions_take_sentiment_and_topic() -> None:
    reg = InstructionRegistry()
    text = reg.render("convsent", "What do you think of jazz?", sentiment="negative",
                      topic="jazz")
    assert "jazz" in text.split("\nInput:")[0] and "negative" in text
    with pytest.raises(InstructionError, match="sentiment and topic"):
        reg.render("convsent", "What do you think of jazz?")
    with pytest.raises(InstructionError, match="unknown task 'nope'"):
        reg.render("nope", "x")


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_tasks_can_be_added_from_a_file(tmp_path: Path, suffix: str) -> None:
    tasks = [{"name": "medical", "title": "Medical facts",
              "descriptions": ["Update a drug fact.", "Change a dosage fact."], "held_out": 1}]
    path = tmp_path / f"tasks{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"tasks": tasks}))
    else:
        import yaml

        path.write_text(yaml.safe_dump(tasks))
    reg = InstructionRegistry()
    assert reg.load_file(path) == ["medical"]
    assert reg.render("medical", "Aspirin treats").startswith(
        "Task: Medical facts\nDescription: Update a drug fact.")
    again = InstructionRegistry.from_json(reg.to_json())
    assert again.names == reg.names


@pytest.mark.parametrize("content", ['[{"name": "x"}]', '{"tasks": 3}',
                                     '[{"name": "x", "descriptions": "one string"}]',
                                     '[{"name": "x", "descriptions": ["a"], "held_out": 5}]'])
def test_bad_task_files_are_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InstructionError):
        InstructionRegistry().load_file(path)
