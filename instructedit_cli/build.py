"""``instructedit build-editor``: from a base model and KnowEdit-format data to a shipped
editor folder in one resumable command.

The stages are the commands a build used to chain by hand (``train``, copying ``best/``,
``calibrate-routing``, ``relation-forms``, ``eval``, ``analyze``, ``editor-card``), run on
the same functions. ``build.json`` in the run folder records each finished stage, so a rerun
continues at the first stage that is unfinished or whose outputs are gone, and runs every
stage after it again (they are made from its outputs).
"""

from __future__ import annotations

import json
import random
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Optional

import typer

from editor_core.checkpoint import CONFIG_FILE, ROUTING_FILE, WEIGHTS_FILE
from editor_core.data.records import EditCase
from editor_core.relation_forms import RELATION_FORMS_FILE
from editor_lab.evaluation.card import EDITOR_NAME, ship_editor, stage_table, write_editor_card
from editor_lab.training.config import TrainConfig

from .app import SentimentJudgeName, Threads, app, judge_named, setup
from .train import calibrate, train_config

BUILD_FILE = "build.json"
# Fact edits: records with a subject, rephrases and same-subject locality prompts, which
# the edit memory's routing is calibrated on (ConvSent's opinions are not keyed by a fact).
ROUTING_TASKS = ("counterfact", "recent", "zsre")
HELD_OUT = "zsre"  # the demo recipes train without it: evaluated too, where data_dir has it
EVAL_LIMIT, ANALYSIS_LIMIT, TRAINING_LIMIT = 100, 60, 1500


@dataclass(frozen=True)
class Build:
    """One build: the training config, the folder it ships to and the options of each stage."""

    cfg: TrainConfig
    out: Path
    command: str  # as the card names it
    eval_limit: int
    analysis_limit: int
    training_limit: int
    sentiment_judge: str
    notes: Path | None

    @property
    def run(self) -> Path:
        return Path(self.cfg.out_dir)

    @property
    def best(self) -> Path:
        return self.run / "best"

    @property
    def record_path(self) -> Path:
        return self.run / BUILD_FILE

    @property
    def routing_tasks(self) -> list[str]:
        return [t for t in self.cfg.tasks if t in ROUTING_TASKS]

    @property
    def eval_tasks(self) -> list[str]:
        held_out = (HELD_OUT not in self.cfg.tasks
                    and (Path(self.cfg.data_dir) / f"{HELD_OUT}_test.json").exists())
        return [*self.cfg.tasks, *([HELD_OUT] if held_out else [])]

    def settings(self) -> dict:
        """What the outputs depend on (not threads or device): a record made under other
        settings does not describe this build."""
        return {"config": self.cfg.model_dump(exclude={"threads", "device"}),
                "out": str(self.out), "eval_limit": self.eval_limit,
                "analysis_limit": self.analysis_limit, "training_limit": self.training_limit,
                "sentiment_judge": self.sentiment_judge,
                "notes": None if self.notes is None else str(self.notes)}


@dataclass(frozen=True)
class Stage:
    """A step of the build and the files that show it finished."""

    name: str
    run: Callable[[Build], None]
    outputs: tuple[Path, ...]


# --- the stages -------------------------------------------------------------------------


def _load_lm(model: str) -> tuple:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model).eval(), AutoTokenizer.from_pretrained(model)


def _test_sample(b: Build, limit: int) -> dict[str, list[EditCase]]:
    """The same deterministic sample per task as ``instructedit eval --limit``."""
    from editor_lab.training.examples import load_task_records

    records = load_task_records(b.cfg.data_dir, b.eval_tasks, "test")
    return {t: random.Random(0).sample(r, min(limit, len(r))) for t, r in records.items()}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def train_stage(b: Build) -> None:
    """Meta-train as ``instructedit train`` does, resuming from ``last/``."""
    from editor_lab.training.trainer import Trainer

    summary = Trainer(b.cfg, judge_named(b.sentiment_judge)).fit(resume=True)
    typer.echo(f"{summary['steps']} steps, best validation score "
               f"{summary['best_val_score']:.4f}")


def ship_stage(b: Build) -> None:
    """The best checkpoint into the shipped folder."""
    ship_editor(b.out, b.best)


def routing_stage(b: Build) -> None:
    """``instructedit calibrate-routing`` into the shipped folder, on the config's fact tasks."""
    figures = calibrate(b.out, Path(b.cfg.model), Path(b.cfg.data_dir), b.routing_tasks,
                        b.training_limit)
    typer.echo(f"threshold {figures['threshold']}, key space {figures['key_space']}")


def relation_forms_stage(b: Build) -> None:
    """``instructedit relation-forms --out`` the shipped folder (the command's own function)."""
    from .data import relation_forms_cmd

    relation_forms_cmd(b.out)


def eval_stage(b: Build) -> None:
    """``instructedit eval`` of the trained editor beside no edit (no baselines)."""
    from editor_core.checkpoint import load_editor
    from editor_lab.evaluation.evaluator import Evaluator, markdown_table
    from editor_lab.evaluation.methods import HypernetworkMethod, NoEditMethod

    lm, tokenizer = _load_lm(b.cfg.model)
    records = _test_sample(b, b.eval_limit)
    methods = [NoEditMethod(), HypernetworkMethod(EDITOR_NAME, load_editor(b.best, lm, tokenizer))]
    evaluator = Evaluator(lm, tokenizer, sentiment_judge=judge_named(b.sentiment_judge))
    results = {m.name: evaluator.evaluate(m, records) for m in methods}
    settings = {"model": b.cfg.model, "data_dir": b.cfg.data_dir, "split": "test",
                "limit": b.eval_limit, "tasks": list(records)}
    _write_json(b.run / "eval.json", {"results": results, "lifelong": {}, "settings": settings})
    typer.echo(markdown_table(results))


def analyze_stage(b: Build) -> None:
    """``instructedit analyze`` of the trained editor: its edit regions, JSON and PNG."""
    from editor_core.checkpoint import load_editor
    from editor_lab.evaluation.analysis import analyze_editor, plot_edit_regions

    lm, tokenizer = _load_lm(b.cfg.model)
    analysis = analyze_editor(load_editor(b.best, lm, tokenizer),
                              _test_sample(b, b.analysis_limit), desc=EDITOR_NAME)
    _write_json(b.run / "analysis.json", {EDITOR_NAME: analysis})
    plot_edit_regions({EDITOR_NAME: analysis}, b.run / "edit_regions.png")
    typer.echo(f"nearest-centroid accuracy "
               f"{analysis['separation']['nearest_centroid_accuracy']:.3f}")


def card_stage(b: Build) -> None:
    """The model card, with the evidence and each earlier stage's time."""
    stages = read_record(b.record_path)["stages"]
    commands = {"build": b.command, "train": f"{b.command} (its train stage)",
                "eval": f"{b.command} (its eval stage)",
                "analyze": f"{b.command} (its analyze stage)"}
    write_editor_card(b.out, b.out, b.run / "eval.json", b.run / "analysis.json",
                      b.run / "edit_regions.png", b.run / "training_curves.png",
                      held_out=HELD_OUT, commands=commands,
                      notes=b.notes.read_text() if b.notes else "",
                      stage_seconds={name: s["seconds"] for name, s in stages.items()})


def stages(b: Build) -> list[Stage]:
    """The build, in order."""
    return [
        Stage("train", train_stage, (b.best / WEIGHTS_FILE, b.best / CONFIG_FILE,
                                     b.run / "training_curves.png")),
        Stage("ship", ship_stage, (b.out / WEIGHTS_FILE, b.out / CONFIG_FILE)),
        Stage("calibrate-routing", routing_stage, (b.out / ROUTING_FILE,)),
        Stage("relation-forms", relation_forms_stage, (b.out / RELATION_FORMS_FILE,)),
        Stage("eval", eval_stage, (b.run / "eval.json",)),
        Stage("analyze", analyze_stage, (b.run / "analysis.json", b.run / "edit_regions.png")),
        Stage("card", card_stage, (b.out / "README.md",)),
    ]


# --- the record and the run ---------------------------------------------------------------


def read_record(path: Path) -> dict:
    return json.loads(path.read_text())


def _start_record(b: Build, restart: bool) -> dict:
    """The record to continue: a fresh one on ``restart`` or when there is none."""
    fresh = {"command": b.command, "settings": b.settings(), "stages": {}}
    if restart or not b.record_path.exists():
        return fresh
    record = read_record(b.record_path)
    if record["settings"] != b.settings():
        changed = sorted(k for k in fresh["settings"]
                         if record["settings"].get(k) != fresh["settings"][k])
        typer.echo(f"{b.record_path} records a build with other settings ({', '.join(changed)})"
                   f": pass --restart to build again with these", err=True)
        raise typer.Exit(code=2)
    return record | {"command": b.command}


def _first_unfinished(plan: list[Stage], record: dict) -> int:
    return next((i for i, s in enumerate(plan) if s.name not in record["stages"]
                 or not all(p.exists() for p in s.outputs)), len(plan))


def run_build(b: Build, restart: bool = False) -> dict:
    """Run the stages from the first unfinished one, recording each as it finishes."""
    plan = stages(b)
    record = _start_record(b, restart)
    first = _first_unfinished(plan, record)
    for stage in plan[first:]:
        record["stages"].pop(stage.name, None)
    b.run.mkdir(parents=True, exist_ok=True)
    _write_json(b.record_path, record)
    for i, stage in enumerate(plan):
        if i < first:
            typer.echo(f"stage {stage.name}: finished {record['stages'][stage.name]['finished_at']}"
                       ", skipped")
            continue
        typer.echo(f"\n== stage {stage.name} ({i + 1}/{len(plan)}) ==")
        start = time.perf_counter()
        stage.run(b)
        seconds = time.perf_counter() - start
        record["stages"][stage.name] = {"seconds": round(seconds, 1),
                                        "finished_at": datetime.now(UTC).isoformat()}
        _write_json(b.record_path, record)
        typer.echo(f"stage {stage.name} done in {seconds:.1f}s")
    record["total_seconds"] = round(sum(s["seconds"] for s in record["stages"].values()), 1)
    _write_json(b.record_path, record)
    return record


def _command_line(config: Path, out: Path, overrides: list[str],
                  options: dict[str, object]) -> str:
    """This invocation as a reader would type it (options left at their default omitted)."""
    words = ["instructedit", "build-editor", "--config", str(config),
             *(f"--set={o}" for o in overrides), "--out", str(out)]
    for flag, value in options.items():
        words += [flag, str(value)]
    return shlex.join(words)


@app.command("build-editor")
def build_editor_cmd(
    config: Annotated[Path, typer.Option(
        help="YAML or JSON training config, as instructedit train reads it: its model, "
             "data_dir, tasks and out_dir (the run folder, which keeps build.json)")],
    out: Annotated[Path, typer.Option(
        help="the folder to ship: editor, routing, relation forms, evaluation, model card")],
    overrides: Annotated[Optional[list[str]], typer.Option(
        "--set", help="override a config value: key=value (repeatable)")] = None,
    device: Annotated[Optional[str], typer.Option(
        help="training device, cpu or cuda (one process); the config's by default")] = None,
    eval_limit: Annotated[int, typer.Option(
        help="edits evaluated per task (a deterministic sample of the test split)")
    ] = EVAL_LIMIT,
    analysis_limit: Annotated[int, typer.Option(
        help="edits per task in the edit-region analysis")] = ANALYSIS_LIMIT,
    training_limit: Annotated[int, typer.Option(
        help="training records the routing's key space is fitted on")] = TRAINING_LIMIT,
    notes: Annotated[Optional[Path], typer.Option(
        help="markdown appended to the model card")] = None,
    restart: Annotated[bool, typer.Option(
        help="discard build.json and run every stage again (training still resumes from "
             "OUT_DIR/last: delete the run folder to train from scratch)")] = False,
    sentiment_judge: SentimentJudgeName = "labels",
    threads: Threads = None,
) -> None:
    """Build a shipped editor from a training config: train, ship the best checkpoint,
    calibrate the routing, write the relation forms, evaluate, analyse edit regions and write
    the model card. Resumable: a rerun skips the stages build.json records as finished."""
    cfg = train_config(config, overrides, device)
    if threads is not None:  # the config records the threads the editor was trained with
        cfg = cfg.model_copy(update={"threads": threads})
    options = {flag: value for flag, value, default in (
        ("--device", device, None), ("--eval-limit", eval_limit, EVAL_LIMIT),
        ("--analysis-limit", analysis_limit, ANALYSIS_LIMIT),
        ("--training-limit", training_limit, TRAINING_LIMIT), ("--notes", notes, None),
        ("--sentiment-judge", sentiment_judge, "labels"), ("--threads", threads, None))
        if value != default}
    b = Build(cfg, out, _command_line(config, out, overrides or [], options),
              eval_limit=eval_limit, analysis_limit=analysis_limit,
              training_limit=training_limit, sentiment_judge=sentiment_judge, notes=notes)
    if not b.routing_tasks:
        raise typer.BadParameter(f"the config trains on no fact task ({', '.join(ROUTING_TASKS)})"
                                 ": the routing has nothing to be calibrated on")
    setup(cfg.threads)
    record = run_build(b, restart)
    typer.echo(f"\n{stage_table({n: s['seconds'] for n, s in record['stages'].items()})}")
    typer.echo(f"built {out} (stages recorded in {b.record_path})")
