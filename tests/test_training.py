"""Meta-training on a tiny random model: the loop, its files, resuming, skipping bad steps."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from editor_core.checkpoint import load_editor
from editor_core.data.records import EditCase, Probe
from editor_lab.training.config import TrainConfig, load_train_config, parse_override
from editor_lab.training.examples import TaskSampler, make_example
from editor_lab.training.objective import answer_mask, encode_probes, locality_kl
from editor_lab.training.trainer import Trainer

from .tiny_models import saved_tiny_model, small_tokenizer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    return saved_tiny_model(tmp_path_factory.mktemp("tiny-lm"), "gpt2", small_tokenizer())


def tiny_config(tiny_lm: Path, exported: Path, out: Path, **over) -> TrainConfig:
    base = dict(model=str(tiny_lm), data_dir=str(exported), out_dir=str(out), rank=8,
                accumulate=2, steps=4, val_every=2, val_edits=3, threads=1, lr=1e-3)
    base.update(over)
    return TrainConfig(**base)


def test_config_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("lr: 0.01\ntasks: [counterfact, recent]\n")
    cfg = load_train_config(path, ["lr=3e-4", "task_weights={counterfact: 3, recent: 1}"])
    assert cfg.lr == 3e-4 and cfg.tasks == ["counterfact", "recent"]
    assert cfg.task_mix() == {"counterfact": 0.75, "recent": 0.25}
    assert TrainConfig().task_mix() == {t: 1 / 3 for t in ("counterfact", "recent", "convsent")}
    assert parse_override("tasks=[zsre]") == ("tasks", ["zsre"])
    with pytest.raises(ValueError):
        load_train_config(None, ["no_such_key=1"])
    with pytest.raises(ValueError, match="unknown task"):
        TrainConfig(tasks=["bogus"]).task_mix()


def test_sampler_balances_tasks_whatever_their_sizes() -> None:
    def rec(task: str, i: int) -> EditCase:
        return EditCase(task, f"s{i}", f"p{i}", "t")

    records = {"counterfact": [rec("counterfact", i) for i in range(1000)],
               "recent": [rec("recent", i) for i in range(10)]}
    sampler = TaskSampler(records, {"counterfact": 0.5, "recent": 0.5}, random.Random(0))
    drawn = [sampler.sample().task for _ in range(4000)]
    assert abs(drawn.count("recent") / len(drawn) - 0.5) < 0.03


def test_examples_use_paraphrases_and_locality(exported: Path) -> None:
    from editor_core.data import load_edit_records

    record = load_edit_records(exported / "counterfact_train.json")[0]
    ex = make_example(record, random.Random(0), max_paraphrases=5, max_locality=10)
    assert ex.edit_probes[0] == Probe(record.prompt, record.target_new)
    assert {p.prompt for p in ex.edit_probes[1:]} == set(record.rephrases)
    assert all(p.answer == record.target_new for p in ex.edit_probes)
    locality = {p for probes in record.locality.values() for p in probes}
    assert set(ex.locality_probes) <= locality and ex.locality_probes
    convsent = load_edit_records(exported / "convsent_train.json")[0]
    ex = make_example(convsent, random.Random(0), 5, 10)
    assert all(p.answer in convsent.answers for p in ex.edit_probes)


def test_locality_kl_is_zero_for_identical_logits_and_counts_answer_tokens_only() -> None:
    tok = small_tokenizer()

    class Holder:
        tokenizer = tok
        max_length = 64

    batch = encode_probes(Holder(), [Probe("Which day comes after Monday?", "Tuesday")])
    logits = torch.randn(1, batch.input_ids.shape[1], len(tok))
    assert locality_kl(logits, logits, batch).item() == pytest.approx(0, abs=1e-6)
    changed = logits.clone()
    mask = answer_mask(batch)
    changed[:, :-1][~mask] += torch.randn_like(changed[:, :-1][~mask]) * 5
    assert locality_kl(logits, changed, batch).item() == pytest.approx(0, abs=1e-6)
    changed[:, :-1][mask] += torch.randn_like(changed[:, :-1][mask]) * 5
    assert locality_kl(logits, changed, batch).item() > 0.01


def test_edit_loss_mean_or_sum_over_answer_tokens() -> None:
    from editor_lab.training.objective import edit_nll

    tok = small_tokenizer()

    class Holder:
        tokenizer = tok
        max_length = 64

    batch = encode_probes(Holder(), [Probe("Q?", "one two three four"), Probe("Q?", "five")])
    logits = torch.randn(2, batch.input_ids.shape[1], len(tok))
    n_tokens = answer_mask(batch).sum(1).float()
    per_token = edit_nll(logits[:1], type(batch)(batch.input_ids[:1], batch.attention_mask[:1],
                                                  batch.labels[:1]))
    summed = edit_nll(logits[:1], type(batch)(batch.input_ids[:1], batch.attention_mask[:1],
                                               batch.labels[:1]), "sum")
    assert summed.item() == pytest.approx(per_token.item() * n_tokens[0].item(), rel=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        edit_nll(logits, batch, "max")


def test_training_runs_validates_saves_and_resumes(tiny_lm, exported, tmp_path) -> None:
    out = tmp_path / "run"
    trainer = Trainer(tiny_config(tiny_lm, exported, out, steps=2))
    before = {k: v.clone() for k, v in trainer.editor.hypernetwork.state_dict().items()}
    summary = trainer.fit()
    assert summary["steps"] == 2 and summary["skipped_steps"] == 0
    after = trainer.editor.hypernetwork.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it learned something
    for name in ("config.json", "log.jsonl", "training_curves.png", "best/editor.safetensors",
                 "last/trainer_state.json", "last/optimizer.safetensors"):
        assert (out / name).exists(), name
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]
    val = [r for r in rows if r["kind"] == "validation"]
    assert val and 0 <= val[-1]["score"] <= 1 and "recent/locality" in val[-1]
    # The best checkpoint loads against the model it was trained for.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    editor = load_editor(out / "best", model, AutoTokenizer.from_pretrained(tiny_lm))
    assert editor.use_instructions
    # Resuming continues from step 2 with the saved optimiser state.
    again = Trainer(tiny_config(tiny_lm, exported, out, steps=4))
    assert again.resume() and again.step == 2
    assert again.optim.state_dict()["state"]
    again.fit()
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]


def test_non_finite_steps_are_skipped_and_counted(tiny_lm, exported, tmp_path) -> None:
    trainer = Trainer(tiny_config(tiny_lm, exported, tmp_path / "nan", c_edit=float("nan")))
    before = {k: v.clone() for k, v in trainer.editor.hypernetwork.named_parameters()}
    record = trainer.train_step()
    assert record["skipped"] == 1 and trainer.skipped == 1
    assert all(torch.equal(before[k], v) for k, v in trainer.editor.hypernetwork.named_parameters())


def test_bf16_steps_run_under_autocast_and_keep_fp32_weights(tiny_lm, exported,
                                                             tmp_path) -> None:
    """The GPU path's mixed precision, on the CPU: the step's passes in bfloat16 give a
    finite loss that differs from fp32's on the same example, and the hypernetwork and its
    update stay fp32."""
    records = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        trainer = Trainer(tiny_config(tiny_lm, exported, tmp_path / precision,
                                      precision=precision))
        records[precision] = trainer.train_step()
        assert all(p.dtype == torch.float32 for p in trainer.editor.hypernetwork.parameters())
    assert math.isfinite(records["bf16"]["loss"]) and records["bf16"]["skipped"] == 0
    assert records["bf16"]["loss"] != records["fp32"]["loss"]


def test_without_instructions_ablation(tiny_lm, exported, tmp_path) -> None:
    trainer = Trainer(tiny_config(tiny_lm, exported, tmp_path / "plain",
                                  use_instructions=False, tasks=["counterfact"]))
    example = make_example(trainer.sampler.sample(), random.Random(0), 2, 2)
    assert trainer.editor.edit_input(example.request) == example.request.prompt
    assert trainer.train_step()["step"] == 1


def test_data_parallel_training_with_two_processes(tiny_lm, exported, tmp_path) -> None:
    """torchrun with 2 CPU processes (gloo) trains and saves one checkpoint."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(29500 + random.Random().randrange(1000)),
           "-m", "instructedit_cli", "train", "--threads", "1",
           "--set", f"model={tiny_lm}", "--set", f"data_dir={exported}",
           "--set", f"out_dir={out}", "--set", "rank=8", "--set", "accumulate=1",
           "--set", "steps=2", "--set", "val_every=2", "--set", "val_edits=2",
           "--set", "tasks=[counterfact]"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "best" / "editor_config.json").read_text())
    assert config["training"]["processes"] == 2 and config["training"]["steps"] == 2


def test_weights_substituted_matches_functional_call_and_always_restores(tiny_lm) -> None:
    from transformers import AutoModelForCausalLM

    from editor_lab.training.objective import weights_substituted

    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    name = "transformer.h.1.mlp.c_fc.weight"
    own = dict(model.named_parameters())[name]
    original = own.detach().clone()
    other = {name: original + 0.5}
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        expected = torch.func.functional_call(model, other, args=(ids,)).logits
        with weights_substituted(model, other) as swapped:
            torch.testing.assert_close(swapped(ids).logits, expected)
        with pytest.raises(RuntimeError, match="boom"), weights_substituted(model, other):
            raise RuntimeError("boom")
    assert dict(model.named_parameters())[name] is own and torch.equal(own, original)


def test_convsent_validation_scores_greedy_sentiment(tiny_lm, exported, tmp_path,
                                                     monkeypatch) -> None:
    import editor_lab.training.trainer as trainer_module
    from editor_lab.world.sentiment import sentiment_of

    trainer = Trainer(tiny_config(tiny_lm, exported, tmp_path / "cs", tasks=["convsent"],
                                  val_edits=4), sentiment_judge=sentiment_of)
    val = trainer.validate()
    # A random tiny model answers with no sentiment words: no edit counts as flipped.
    assert val["convsent/edit_acc"] == 0.0 and 0.0 <= val["convsent/locality"] <= 1.0
    # Answers that always praise: exactly the edits whose new sentiment is positive succeed.
    monkeypatch.setattr(trainer_module, "greedy_continuations",
                        lambda model, tok, prompts, n: ["I love it. It is wonderful."] * len(
                            prompts))
    chosen = random.Random(trainer.cfg.seed).sample(trainer.val["convsent"], 4)
    expected = sum(r.sentiment == "positive" for r in chosen) / 4
    assert 0 < expected < 1  # the sample holds both directions, so the check can tell
    assert trainer.validate()["convsent/edit_acc"] == pytest.approx(expected)


def test_convsent_validation_without_a_judge_reads_the_cases_own_labels(
        tiny_lm, exported, tmp_path, monkeypatch) -> None:
    """No sentiment judge given: an answer counts when it opens like one of the case's
    labelled answers of the new sentiment, never by the demo world's words."""
    import editor_lab.training.trainer as trainer_module

    trainer = Trainer(tiny_config(tiny_lm, exported, tmp_path / "labels", tasks=["convsent"],
                                  val_edits=4))
    by_prompt = {p: r for r in trainer.val["convsent"] for p in (r.prompt, *r.rephrases)}

    def answering(which: str):
        return lambda model, tok, prompts, n: [getattr(by_prompt[p], which)[0] for p in prompts]

    monkeypatch.setattr(trainer_module, "greedy_continuations", answering("answers"))
    assert trainer.validate()["convsent/edit_acc"] == 1.0
    monkeypatch.setattr(trainer_module, "greedy_continuations", answering("opposite_answers"))
    assert trainer.validate()["convsent/edit_acc"] == 0.0


def test_ridge_training_learns_lambda_banks_edits_and_saves_the_combination(
        tiny_lm: Path, exported: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_lm, exported, tmp_path / "run", combination="ridge",
                      ridge_lambda=2.0, ridge_lambda_lr=0.1, background_edits=6,
                      background_refresh=2, retain_probes=3, bank_locality_probes=3,
                      val_joint_edits=4,
                      tasks=["counterfact", "recent"], steps=3, val_every=3)
    trainer = Trainer(cfg)
    trainer.fit(resume=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text(
        ).splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert len(train) == 3 and all(r["retain_nll"] > 0 and r["loc_kl"] >= 0 for r in train)
    assert trainer.bank.sums.count == 6 and len(trainer.bank.members) == 6
    crowd = {(p.prompt, p.answer) for r in trainer.bank.members for ps in r.locality.values()
             for p in ps}
    probes = trainer.bank.locality_probes(3)
    assert len(probes) == 3 and all((p.prompt, p.answer) in crowd for p in probes)
    lam = trainer.log_lam.detach().exp()
    assert not torch.allclose(lam, torch.full_like(lam, 2.0))  # λ is learned
    val = next(r for r in rows if r["kind"] == "validation")
    assert 0.0 <= val["counterfact/edit_acc"] <= 1.0 and 0.0 <= val["recent/locality"] <= 1.0
    # The checkpoint says how its edits combine, with the learned λ.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    editor = load_editor(tmp_path / "run" / "best", model, small_tokenizer())
    assert editor.combination.kind == "ridge"
    assert editor.combination.ridge_lambda == pytest.approx(
        {w.name: float(v) for w, v in zip(editor.editable, lam)}, rel=1e-5)
    # Resuming restores λ along with the rest.
    again = Trainer(cfg.model_copy(update={"steps": 3}))
    assert again.resume() and torch.allclose(again.log_lam, trainer.log_lam)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here"))]


@pytest.mark.parametrize("device", DEVICES)
def test_training_keeps_everything_on_its_device(tiny_lm, exported, tmp_path, device) -> None:
    """The model, the hypernetwork, λ and the optimiser's state live on the device asked
    for, and stay there through a step and a resume."""
    cfg = tiny_config(tiny_lm, exported, tmp_path / "dev", steps=1, combination="ridge",
                      device=device)
    trainer = Trainer(cfg)
    trainer.fit()
    again = Trainer(cfg.model_copy(update={"steps": 2}))
    again.fit()
    for t in (trainer, again):
        tensors = [*t.editor.model.parameters(), *t.editor.hypernetwork.parameters(),
                   t.log_lam, *(v for s in t.optim.state.values() for v in s.values()
                                if isinstance(v, torch.Tensor) and v.dim() > 0)]
        assert {x.device.type for x in tensors} == {torch.device(device).type}


def test_train_command_passes_its_device_to_the_trainer(monkeypatch) -> None:
    """``instructedit train --device`` reaches the trainer's config (it used to be dropped)."""
    from typer.testing import CliRunner

    import editor_lab.training.trainer as trainer_module
    from instructedit_cli import app

    seen = {}

    class Recorder:
        def __init__(self, cfg, sentiment_judge=None) -> None:
            seen["device"] = cfg.device

        def fit(self, resume: bool = True) -> dict:
            return {"steps": 0}

    monkeypatch.setattr(trainer_module, "Trainer", Recorder)
    result = CliRunner().invoke(app, ["train", "--device", "meta", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert seen == {"device": "meta"}


def test_cpu_training_uses_gloo_even_where_gpus_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    from editor_lab.training.trainer import process_group_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert process_group_backend("cpu") == "gloo"
    assert process_group_backend("cuda") == process_group_backend("cuda:1") == "nccl"
