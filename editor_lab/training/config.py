"""Meta-training configuration: a file (YAML or JSON) plus ``key=value`` overrides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from editor_core.data.records import TASKS


class TrainConfig(BaseModel):
    """Everything a training run depends on; saved beside its checkpoints."""

    model_config = ConfigDict(extra="forbid")

    model: str = "checkpoints/demo-lm"
    data_dir: str = "data/world"
    out_dir: str = "runs/demo-editor"
    tasks: list[str] = Field(default_factory=lambda: ["counterfact", "recent", "convsent"])
    task_weights: dict[str, float] | None = None  # None: balanced, whatever the file sizes
    use_instructions: bool = True
    editable: list[str] | None = None
    init_from: str | None = None  # start from this editor checkpoint's hypernetwork
    last_blocks: int = 3
    rank: int = 256
    n_blocks: int = 2
    init_step_size: float = 1e-4
    delta_scaling: Literal["none", "per_edit"] = "none"
    lr: float = 1e-4
    step_size_lr: float = 1e-5  # step sizes are ~1e-4: a larger rate makes them swing
    c_edit: float = 0.1
    edit_loss: Literal["mean", "sum"] = "mean"  # per-token mean or sum of the answer NLL
    c_loc: float = 1.0
    # How the trained editor's edits are combined. "ridge": each step's edits (with a
    # background bank of other edits) are combined by the joint ridge solve inside the graph.
    combination: Literal["sum", "ridge"] = "sum"
    ridge_lambda: float = 3.0  # initial λ per weight (learned, in log space)
    ridge_lambda_lr: float = 1e-2
    background_edits: int = 0  # bank size (ridge only)
    background_refresh: int = 50  # steps between bank refreshes
    retain_probes: int = 8  # bank edits checked after each step's solve
    bank_locality_probes: int = 0  # locality probes of bank edits added to the step's
    val_joint_edits: int = 64  # ridge validation: edits combined at once (per task)
    grad_clip: float = 100.0
    accumulate: int = 4  # edits per optimiser step (per process)
    steps: int = 2000  # optimiser steps
    val_every: int = 200
    val_edits: int = 48
    max_paraphrases: int = 3
    max_locality: int = 6
    seed: int = 0
    threads: int = 2
    device: str = "cpu"  # cuda: under torchrun each process takes cuda:LOCAL_RANK
    # bf16: a step's forward and backward passes under torch.autocast in bfloat16 (the base
    # model's and the hypernetwork's matmuls); weights, optimiser and validation stay fp32
    precision: Literal["fp32", "bf16"] = "fp32"
    max_minutes: float | None = None

    def task_mix(self) -> dict[str, float]:
        """Sampling probability per task (balanced unless weights are given)."""
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; known: {list(TASKS)}")
        weights = self.task_weights or {t: 1.0 for t in self.tasks}
        missing = [t for t in self.tasks if t not in weights]
        if missing:
            raise ValueError(f"task_weights lacks {missing}")
        total = sum(weights[t] for t in self.tasks)
        return {t: weights[t] / total for t in self.tasks}


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` with the value read as YAML (``lr=1e-4``, ``tasks=[zsre]``)."""
    if "=" not in item:
        raise ValueError(f"override {item!r} is not key=value")
    key, value = item.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def load_train_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        data = json.loads(text) if str(path).endswith(".json") else (yaml.safe_load(text) or {})
    data.update(dict(parse_override(o) for o in overrides))
    return TrainConfig.model_validate(data)
