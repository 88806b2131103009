"""Meta-training the editor (MEND's outer loop, InstructEdit's multi-task instructions).

Each step draws ``accumulate`` edits from the task mix, computes their editing gradients on
the frozen model, runs them through the hypernetwork, and scores the edited model:
``c_edit · NLL(new target | plain prompt and paraphrases) + c_loc · KL(pre ‖ post)`` on
locality prompts. Gradients reach the networks and step sizes through ΔW; steps whose
gradients are not finite are skipped and counted. Validation on a disjoint split picks the
best checkpoint; ``last/`` holds everything needed to resume. Under ``torchrun`` the
hypernetwork is wrapped in DistributedDataParallel (gloo on CPU, NCCL on GPU): each process
draws its own edits and gradients are averaged.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from editor_core.checkpoint import model_fingerprint, save_editor
from editor_core.combination import CombinationConfig
from editor_core.data.records import SentimentJudge, carries_sentiment
from editor_core.editor import Captured, Editor
from editor_core.hypernetwork import Hypernetwork, HypernetworkConfig
from editor_core.instructions import InstructionRegistry
from editor_core.specs import resolve_editable
from editor_lab.decoding import greedy_continuations

from .config import TrainConfig
from .examples import TaskSampler, TrainingExample, load_task_records, make_example
from .joint import EditBank, KeyValueSums, ridge_weights, with_bank
from .objective import (
    edit_nll,
    edited_weights,
    encode_probes,
    locality_kl,
    logits_with,
    token_accuracy,
    unchanged_fraction,
    weights_substituted,
)

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"


class EditorNet(nn.Module):
    """One forward per step for DDP: captured edits in, their factors out."""

    def __init__(self, editor: Editor) -> None:
        super().__init__()
        self.editor = editor
        self.hypernetwork = editor.hypernetwork

    def forward(self, captured: list[Captured]):
        return [self.editor.transform(c) for c in captured]


@dataclass
class _Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def process_group_backend(device: str) -> str:
    """NCCL where the processes train on GPUs, gloo on CPU (even on a machine with GPUs)."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _init_distributed(device: str) -> _Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Distributed()
    if not dist.is_initialized():
        dist.init_process_group(process_group_backend(device))
    return _Distributed(dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", "0")))


def _process_device(device: str, distributed: _Distributed) -> torch.device:
    """Where this process trains: ``device``, or its own GPU (``cuda:LOCAL_RANK``) when
    ``device`` is ``cuda`` under torchrun."""
    chosen = torch.device(device)
    if chosen.type == "cuda" and chosen.index is None and distributed.world > 1:
        chosen = torch.device("cuda", distributed.local_rank)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    return chosen


def build_editor(cfg: TrainConfig, device: str | torch.device = "cpu") -> Editor:
    model = AutoModelForCausalLM.from_pretrained(cfg.model).to(device).eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    editable = resolve_editable(model, cfg.editable, cfg.last_blocks)
    hyper = Hypernetwork(editable, HypernetworkConfig(rank=cfg.rank, n_blocks=cfg.n_blocks,
                                                      init_step_size=cfg.init_step_size,
                                                      delta_scaling=cfg.delta_scaling))
    # ridge: the deltas carry their ridge inputs (λ is learnt beside and saved with it)
    combination = (CombinationConfig("ridge", cfg.ridge_lambda) if cfg.combination == "ridge"
                   else CombinationConfig())
    return Editor(model, tokenizer, hyper.to(device), InstructionRegistry(),
                  use_instructions=cfg.use_instructions, combination=combination)


class Trainer:
    def __init__(self, cfg: TrainConfig, sentiment_judge: SentimentJudge | None = None) -> None:
        """``sentiment_judge`` reads a ConvSent answer's sentiment during validation; without
        one, answers are judged by each record's labelled answers."""
        self.cfg = cfg
        self.sentiment_judge = sentiment_judge
        self.dist = _init_distributed(cfg.device)
        self.device = _process_device(cfg.device, self.dist)
        self.out = Path(cfg.out_dir)
        torch.manual_seed(cfg.seed)
        self.editor = build_editor(cfg, self.device)
        if cfg.init_from:
            self.editor.hypernetwork.load_state_dict(
                load_file(str(Path(cfg.init_from) / "editor.safetensors"),
                          device=str(self.device)), strict=True)
        self.base_fingerprint = model_fingerprint(self.editor.model, self.editor.editable,
                                                  self.editor.tokenizer)
        self.net: nn.Module = EditorNet(self.editor)
        if self.dist.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device] if self.device.type == "cuda" else None)
        hyper = self.editor.hypernetwork
        nets = [p for n, p in hyper.named_parameters() if n != "step_sizes"]
        groups = [{"params": nets, "lr": cfg.lr},
                  {"params": [hyper.step_sizes], "lr": cfg.step_size_lr}]
        # Ridge: λ per weight, learned in log space beside the networks.
        self.log_lam = nn.Parameter(torch.full((len(self.editor.editable),),
                                               math.log(cfg.ridge_lambda),
                                               device=self.device))
        if cfg.combination == "ridge":
            groups.append({"params": [self.log_lam], "lr": cfg.ridge_lambda_lr})
        self.optim = torch.optim.Adam(groups)
        train = load_task_records(cfg.data_dir, cfg.tasks, "train")
        self.val = load_task_records(cfg.data_dir, cfg.tasks, "validation")
        self.rng = random.Random(cfg.seed * 1000 + self.dist.rank)
        self.sampler = TaskSampler(train, cfg.task_mix(), self.rng)
        self.bank = None
        if cfg.combination == "ridge" and cfg.background_edits:
            self.bank = EditBank(self.editor, [r for rs in train.values() for r in rs],
                                 cfg.background_edits, self.rng, self._describe)
        self.step = 0
        self.skipped = 0
        self.best_score = -math.inf
        self.seconds = 0.0

    def lam(self) -> dict[str, torch.Tensor]:
        return {w.name: self.log_lam[i].exp() for i, w in enumerate(self.editor.editable)}

    def combination(self) -> CombinationConfig:
        """How the editor's edits are to be combined, as learnt so far (saved with it)."""
        if self.cfg.combination != "ridge":
            return self.editor.combination
        return CombinationConfig("ridge", {name: float(v.detach())
                                           for name, v in self.lam().items()})

    # -- one example --------------------------------------------------------------------
    def _describe(self, example: TrainingExample) -> TrainingExample:
        """Wrap the edit in a random training description of its task."""
        task = self.editor.registry.get(example.request.task)
        description = self.rng.choice(task.training_descriptions())
        return replace(example, request=replace(example.request, description=description))

    def _loss(self, example: TrainingExample, factors) -> tuple[torch.Tensor, dict]:
        weights = edited_weights(self.editor, factors)
        edit_batch = encode_probes(self.editor, example.edit_probes)
        l_edit = edit_nll(logits_with(self.editor, edit_batch, weights), edit_batch,
                          self.cfg.edit_loss)
        loss = self.cfg.c_edit * l_edit
        stats = {"edit_nll": l_edit.item()}
        if example.locality_probes:
            loc_batch = encode_probes(self.editor, example.locality_probes)
            with torch.no_grad():
                pre = logits_with(self.editor, loc_batch, None)
            l_loc = locality_kl(pre, logits_with(self.editor, loc_batch, weights), loc_batch)
            loss = loss + self.cfg.c_loc * l_loc
            stats["loc_kl"] = l_loc.item()
        return loss, stats

    # -- training -----------------------------------------------------------------------
    def _precision(self) -> contextlib.AbstractContextManager:
        """bf16: autocast (torch keeps losses and softmaxes in fp32 under it)."""
        if self.cfg.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> dict:
        cfg = self.cfg
        self.editor.hypernetwork.train()
        examples = [self._describe(make_example(self.sampler.sample(), self.rng,
                                                cfg.max_paraphrases, cfg.max_locality))
                    for _ in range(cfg.accumulate)]
        if self.bank is not None and (self.bank.sums.count == 0
                                      or self.step % cfg.background_refresh == 0):
            self.bank.refresh()
        with self._precision():
            captured = [self.editor.capture(self.editor.encode([ex.request]))
                        for ex in examples]
            outputs = self.net(captured)
            if cfg.combination == "ridge":
                total, stats = self._joint_loss(examples, outputs)
            else:
                total, stats = 0.0, {"edit_nll": 0.0, "loc_kl": 0.0}
                for ex, factors in zip(examples, outputs):
                    loss, s = self._loss(ex, factors)
                    total = total + loss / len(examples)
                    for k, v in s.items():
                        stats[k] += v / len(examples)
        self.optim.zero_grad(set_to_none=True)
        total.backward()
        params = [p for p in self.editor.hypernetwork.parameters() if p.grad is not None]
        finite = all(torch.isfinite(p.grad).all() for p in params)
        if finite:
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip).item()
            self.optim.step()
        else:
            self.skipped += 1
            norm = float("nan")
        self.step += 1
        return {"step": self.step, "loss": total.item(), "grad_norm": norm,
                "skipped": self.skipped, **stats}

    def _joint_loss(self, examples: list[TrainingExample], outputs) -> tuple[torch.Tensor, dict]:
        """All of the step's edits (and the bank) combined by one ridge solve; the loss asks
        every edit to hold, the bank's sampled edits to survive, and locality to stay what
        the bank alone gives: the bank is detached, so the step's edits can only answer for
        the change they add, not for the crowd's."""
        cfg = self.cfg
        keys = self.editor.ridge_inputs([ex.request for ex in examples])
        sums = KeyValueSums(self.editor)
        for i, factors in enumerate(outputs):
            sums.add({n: k[i] for n, k in keys.items()}, factors)
        weights = ridge_weights(self.editor, with_bank(self.bank, sums), self.lam())
        edit_batch = encode_probes(self.editor, [p for ex in examples for p in ex.edit_probes])
        l_edit = edit_nll(logits_with(self.editor, edit_batch, weights), edit_batch,
                          cfg.edit_loss)
        loss = cfg.c_edit * l_edit
        stats = {"edit_nll": l_edit.item(), "loc_kl": 0.0, "retain_nll": 0.0,
                 "lam_mean": float(self.log_lam.detach().exp().mean())}
        retained = self.bank.retention_probes(cfg.retain_probes) if self.bank else []
        if retained:
            batch = encode_probes(self.editor, retained)
            l_ret = edit_nll(logits_with(self.editor, batch, weights), batch, cfg.edit_loss)
            loss = loss + cfg.c_edit * l_ret
            stats["retain_nll"] = l_ret.item()
        local = [p for ex in examples for p in ex.locality_probes]
        if self.bank is not None and cfg.bank_locality_probes:
            local += self.bank.locality_probes(cfg.bank_locality_probes)
        if local:
            batch = encode_probes(self.editor, local)
            with torch.no_grad():  # the reference: the crowd without this step's edits
                crowd = (ridge_weights(self.editor, self.bank.sums, self.lam())
                         if self.bank is not None and self.bank.sums.count else None)
                pre = logits_with(self.editor, batch, crowd)
            l_loc = locality_kl(pre, logits_with(self.editor, batch, weights), batch)
            loss = loss + cfg.c_loc * l_loc
            stats["loc_kl"] = l_loc.item()
        return loss, stats

    # -- validation ---------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict:
        """Edit success and locality on validation edits (frozen statistics, plain prompts)."""
        if self.cfg.combination == "ridge":
            return self.validate_joint()
        self.editor.hypernetwork.eval()
        rng = random.Random(self.cfg.seed)
        per_task = max(1, self.cfg.val_edits // len(self.val))
        result: dict = {}
        scores = []
        for task, records in self.val.items():
            chosen = rng.sample(records, min(per_task, len(records)))
            acc, loc = [], []
            for record in chosen:
                ex = make_example(record, rng, self.cfg.max_paraphrases, self.cfg.max_locality)
                factors = self.editor.transform(
                    self.editor.capture(self.editor.encode([ex.request])))
                weights = edited_weights(self.editor, factors)
                if record.task == "convsent" and record.sentiment:
                    acc.append(self._sentiment_success(record, weights))
                else:
                    eb = encode_probes(self.editor, ex.edit_probes)
                    acc.append(token_accuracy(logits_with(self.editor, eb, weights), eb).mean())
                if ex.locality_probes:
                    lb = encode_probes(self.editor, ex.locality_probes)
                    pre = logits_with(self.editor, lb, None)
                    loc.append(unchanged_fraction(pre, logits_with(self.editor, lb, weights),
                                                  lb).mean())
            result[f"{task}/edit_acc"] = torch.stack(acc).mean().item()
            result[f"{task}/locality"] = torch.stack(loc).mean().item() if loc else 1.0
            scores.append((result[f"{task}/edit_acc"] + result[f"{task}/locality"]) / 2)
        result["score"] = sum(scores) / len(scores)
        return result

    @torch.no_grad()
    def validate_joint(self) -> dict:
        """Per task, ``val_joint_edits`` validation edits combined by one ridge solve: how
        many hold (plain prompt, teacher-forced; ConvSent by answer sentiment) and how much
        of their locality stays."""
        editor, cfg = self.editor, self.cfg
        editor.hypernetwork.eval()
        rng = random.Random(cfg.seed)
        result: dict = {}
        scores = []
        for task, records in self.val.items():
            chosen = rng.sample(records, min(cfg.val_joint_edits, len(records)))
            examples = [self._describe(make_example(r, rng, cfg.max_paraphrases,
                                                    cfg.max_locality)) for r in chosen]
            requests = [ex.request for ex in examples]
            keys = editor.ridge_inputs(requests)
            batch = editor.transform(editor.capture(editor.encode(requests)))
            sums = KeyValueSums(editor)
            for i in range(len(requests)):
                sums.add({n: k[i] for n, k in keys.items()},
                         {n: f.select(*f.spans[i]) for n, f in batch.items()})
            weights = ridge_weights(editor, sums, self.lam())
            if task == "convsent":
                acc = torch.stack([self._sentiment_success(r, weights) for r in chosen[:16]])
            else:
                eb = encode_probes(editor, [ex.edit_probes[0] for ex in examples])
                acc = token_accuracy(logits_with(editor, eb, weights), eb)
            local = [p for ex in examples for p in ex.locality_probes]
            lb = encode_probes(editor, local)
            loc = unchanged_fraction(logits_with(editor, lb, None),
                                     logits_with(editor, lb, weights), lb)
            result[f"{task}/edit_acc"] = acc.mean().item()
            result[f"{task}/locality"] = loc.mean().item()
            scores.append((result[f"{task}/edit_acc"] + result[f"{task}/locality"]) / 2)
        result["score"] = sum(scores) / len(scores)
        return result

    def _sentiment_success(self, record, weights) -> torch.Tensor:
        """Share of the topic's questions whose greedy answer under the edit carries the new
        sentiment: what the evaluator measures (teacher-forced accuracy would reward the
        answers' shared wording instead)."""
        prompts = [record.prompt, *record.rephrases]
        with weights_substituted(self.editor.edit_model, weights) as model:
            answers = greedy_continuations(model, self.editor.tokenizer, prompts, 24)
        return torch.tensor([float(carries_sentiment(a, record, self.sentiment_judge))
                             for a in answers]).mean()

    # -- state --------------------------------------------------------------------------
    def _summary(self) -> dict:
        return {"steps": self.step, "skipped_steps": self.skipped,
                "best_val_score": self.best_score, "train_seconds": round(self.seconds, 1),
                "task_mix": self.cfg.task_mix(), "config": self.cfg.model_dump(),
                "processes": self.dist.world}

    def save(self, folder: Path) -> None:
        save_editor(folder, self.editor, base_fingerprint=self.base_fingerprint,
                    training=self._summary(), combination=self.combination())

    def save_last(self) -> None:
        last = self.out / "last"
        self.save(last)
        flat = {}
        for i, state in self.optim.state_dict()["state"].items():
            for key, value in state.items():
                flat[f"{i}.{key}"] = torch.as_tensor(value).contiguous()
        save_file(flat, str(last / OPTIMIZER_FILE))
        (last / STATE_FILE).write_text(json.dumps({
            "step": self.step, "skipped": self.skipped, "best_score": self.best_score,
            "seconds": self.seconds, "log_lambda": self.log_lam.tolist()}, indent=2))

    def resume(self) -> bool:
        """Continue from ``last/`` if it exists; returns whether it did."""
        last = self.out / "last"
        if not (last / STATE_FILE).exists():
            return False
        hyper = self.editor.hypernetwork
        hyper.load_state_dict(load_file(str(last / "editor.safetensors"),
                                        device=str(self.device)))
        flat = load_file(str(last / OPTIMIZER_FILE), device=str(self.device))
        state = self.optim.state_dict()
        restored: dict[int, dict] = {}
        for key, value in flat.items():
            i, name = key.split(".", 1)
            restored.setdefault(int(i), {})[name] = value
        state["state"] = restored
        self.optim.load_state_dict(state)
        saved = json.loads((last / STATE_FILE).read_text())
        with torch.no_grad():
            self.log_lam.copy_(torch.tensor(saved.get("log_lambda", self.log_lam.tolist()),
                                            device=self.device))
        self.step, self.skipped = saved["step"], saved["skipped"]
        self.best_score, self.seconds = saved["best_score"], saved["seconds"]
        self.rng.seed(self.cfg.seed * 1000 + self.dist.rank + self.step)
        return True

    # -- the loop -----------------------------------------------------------------------
    def fit(self, resume: bool = True) -> dict:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if self.dist.main:
            (self.out / "config.json").write_text(cfg.model_dump_json(indent=2))
        if resume and self.resume() and self.dist.main:
            tqdm.write(f"resumed from step {self.step}")
        log = (self.out / "log.jsonl").open("a") if self.dist.main else None
        bar = tqdm(total=cfg.steps, initial=self.step, desc="meta-training", unit="step",
                   disable=not self.dist.main)
        deadline = time.monotonic() + 60 * cfg.max_minutes if cfg.max_minutes else math.inf
        while self.step < cfg.steps and time.monotonic() < deadline:
            start = time.perf_counter()
            record = self.train_step()
            self.seconds += time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", skipped=self.skipped)
            if log:
                log.write(json.dumps({"kind": "train", **record}) + "\n")
            if self.step % cfg.val_every == 0 or self.step == cfg.steps:
                self._validate_and_save(log)
        bar.close()
        if self.step % cfg.val_every != 0 and self.step != cfg.steps:
            self._validate_and_save(log)  # stopped by the time budget
        if log:
            log.close()
            plot_training_curves(self.out / "log.jsonl", self.out / "training_curves.png")
        if self.dist.world > 1:  # no process exits while another still validates and saves
            dist.barrier()
        return self._summary()

    def _validate_and_save(self, log) -> None:
        if self.dist.world > 1:
            dist.barrier()
        if not self.dist.main:
            return
        val = self.validate()
        log.write(json.dumps({"kind": "validation", "step": self.step, **val}) + "\n")
        log.flush()
        if val["score"] > self.best_score:
            self.best_score = val["score"]
            self.save(self.out / "best")
        self.save_last()
        tqdm.write(f"step {self.step}: validation score {val['score']:.4f} "
                   f"(best {self.best_score:.4f})")


def plot_training_curves(log_path: Path, png_path: Path) -> None:
    """Training loss (smoothed) and validation scores against steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if r["kind"] == "train"]
    val = [r for r in rows if r["kind"] == "validation"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        steps = [r["step"] for r in train]
        for key in ("loss", "edit_nll", "loc_kl"):
            values = [r.get(key, float("nan")) for r in train]
            window = max(1, len(values) // 50)
            smooth = [sum(values[max(0, i - window + 1): i + 1]) / len(
                values[max(0, i - window + 1): i + 1]) for i in range(len(values))]
            ax1.plot(steps, smooth, label=key)
        ax1.set_yscale("log")
        ax1.set_xlabel("step")
        ax1.set_title("training (moving average)")
        ax1.legend()
    if val:
        steps = [r["step"] for r in val]
        for key in [k for k in val[0] if k not in ("kind", "step")]:
            ax2.plot(steps, [r[key] for r in val], marker="o", label=key)
        ax2.set_xlabel("step")
        ax2.set_title("validation")
        ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
