"""Meta-training an editor and calibrating its edit memory's routing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from editor_lab.training.config import TrainConfig, load_train_config
from service.settings import DEMO_EDITOR_PATH, DEMO_LM_PATH

from .app import DataDir, SentimentJudgeName, TaskList, Threads, app, judge_named, setup


@app.command("train")
def train_cmd(
    config: Annotated[Optional[Path], typer.Option(help="YAML or JSON training config")] = None,
    overrides: Annotated[Optional[list[str]], typer.Option(
        "--set", help="override a config value: key=value (repeatable)")] = None,
    resume: Annotated[bool, typer.Option(help="continue from OUT_DIR/last if present")] = True,
    device: Annotated[Optional[str], typer.Option(
        help="cpu or cuda (under torchrun, each process takes cuda:LOCAL_RANK); the "
             "config's device by default")] = None,
    sentiment_judge: SentimentJudgeName = "labels",
    threads: Threads = None,
) -> None:
    """Meta-train an editor (runs under torchrun for data-parallel training: gloo on CPU,
    NCCL on CUDA)."""
    from editor_lab.training.trainer import Trainer

    cfg = train_config(config, overrides, device)
    setup(cfg.threads if threads is None else threads)
    summary = Trainer(cfg, judge_named(sentiment_judge)).fit(resume=resume)
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))


@app.command("calibrate-routing")
def calibrate_routing_cmd(
    editor: Annotated[Path, typer.Option(
        help="editor folder: the routing is written into it; or 'none' (no trained "
             "editor: give --out, and serve with INSTRUCTEDIT_ROUTING)")] = DEMO_EDITOR_PATH,
    model: Annotated[Path, typer.Option(help="base model (HF format)")] = DEMO_LM_PATH,
    data_dir: DataDir = Path("data/world"),
    tasks: TaskList = "counterfact,recent",
    training_limit: Annotated[int, typer.Option(
        help="training records the key space is fitted on (0: none, the centred gate "
             "input)")] = 1500,
    out: Annotated[Optional[Path], typer.Option(
        help="where to write routing.safetensors (default: the editor folder)")] = None,
    threads: Threads = None,
) -> None:
    """Calibrate the edit memory's routing for an editor: background mean over the training
    prompts, the key space fitted on the training split, thresholds on the validation split
    (never on a measured set)."""
    if str(editor) == "none" and out is None:
        raise typer.BadParameter("without a trained editor, say where the routing goes: --out")
    setup(threads)
    figures = calibrate(editor, model, data_dir, [t.strip() for t in tasks.split(",")],
                        training_limit, out)
    typer.echo(json.dumps(figures, indent=2))


def calibrate(editor_dir: Path, model_dir: Path, data_dir: Path, tasks: list[str],
              training_limit: int, out: Path | None = None) -> dict:
    """Write the routing of the editor in ``editor_dir`` ('none': no trained editor) for
    ``model_dir``, from the tasks' training and validation splits, into ``out`` (default:
    the editor folder); returns the figures it was chosen on."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from editor_core.chat_template import case_in_chat, wraps_turns
    from editor_core.checkpoint import load_editor, save_routing
    from editor_core.gradient_editor import NO_EDITOR, gradient_editor
    from editor_core.routing_calibration import calibrate_routing
    from editor_lab.training.examples import load_task_records

    lm = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ed = (gradient_editor(lm, tokenizer) if str(editor_dir) == NO_EDITOR
          else load_editor(editor_dir, lm, tokenizer, basis="pristine"))
    train = [r for rs in load_task_records(data_dir, tasks, "train").values() for r in rs]
    validation = [r for rs in load_task_records(data_dir, tasks, "validation").values()
                  for r in rs]
    background, fitted = [r.prompt for r in train], train[:training_limit]
    if wraps_turns(tokenizer):  # chat users' questions reach the model inside turn markers
        fitted += [case_in_chat(tokenizer, r) for r in fitted]
        validation += [case_in_chat(tokenizer, r) for r in validation]
        background += [r.prompt for r in fitted[len(fitted) // 2:]]
    routing, figures = calibrate_routing(ed, background, validation,
                                         training_records=fitted)
    (out or editor_dir).mkdir(parents=True, exist_ok=True)
    save_routing(out or editor_dir, routing)
    return figures


def train_config(config: Path | None, overrides: list[str] | None,
                 device: str | None) -> TrainConfig:
    """The training config a command names: the file, its ``--set`` overrides, ``--device``."""
    return load_train_config(config, [*(overrides or []),
                                      *([f"device={device}"] if device else [])])
