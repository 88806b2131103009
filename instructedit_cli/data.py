"""Building the demo world and the demo LM, and measuring the LM."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from service.settings import DEMO_CHAT_LM_PATH, DEMO_LM_PATH

from .app import Threads, app, setup


@app.command("build-world")
def build_world_cmd(
    out: Annotated[Path, typer.Option(help="folder for world.json and the task files")] = Path(
        "data/world"),
    seed: Annotated[int, typer.Option(help="world seed (same seed, same files)")] = 0,
) -> None:
    """Generate the demo knowledge world and export its KnowEdit-format edit data sets."""
    from editor_lab.world import WorldConfig, build_world
    from editor_lab.world.export import export_world

    world = build_world(WorldConfig(seed=seed))
    counts = export_world(world, out)
    kinds = Counter(e.kind if e.seen else f"{e.kind} (unseen)" for e in world.entities.values())
    typer.echo(f"World seed {seed}: {len(world.entities)} entities, {len(world.facts)} facts, "
               f"{len(world.topics)} topics -> {out}")
    typer.echo("| kind | entities |\n|---|---|")
    for kind, n in sorted(kinds.items()):
        typer.echo(f"| {kind} | {n} |")
    typer.echo("\n| data set | train | validation | test |\n|---|---|---|---|")
    for name, by_split in counts.items():
        typer.echo(f"| {name} | {by_split['train']} | {by_split['validation']} | "
                   f"{by_split['test']} |")


@app.command("relation-forms")
def relation_forms_cmd(
    out: Annotated[Path, typer.Option(help="the editor folder to write relations.json in")
                   ] = Path("checkpoints/demo-editor"),
) -> None:
    """Write the demo world's training wordings of each relation as the editor's relation
    catalogue (the wordings evaluation holds out are left out)."""
    from editor_lab.world.templates import training_relation_forms

    forms = training_relation_forms()
    forms.save(out)
    typer.echo(f"{len(forms.forms)} relations, "
               f"{sum(len(t) for t in forms.forms.values())} wordings -> {out}")


@app.command("build-demo-lm")
def build_demo_lm_cmd(
    out: Annotated[Optional[Path], typer.Option(
        help="output folder (Hugging Face format); default checkpoints/demo-lm, with --chat "
             "checkpoints/demo-chat-lm")] = None,
    chat: Annotated[bool, typer.Option(
        help="the chat demo LM: LLaMA architecture, trained on plain text and on "
             "conversations in its own chat template")] = False,
    epochs: Annotated[Optional[int], typer.Option(help="override training epochs")] = None,
    n_layer: Annotated[Optional[int], typer.Option(help="override number of blocks")] = None,
    n_embd: Annotated[Optional[int], typer.Option(help="override width")] = None,
    eval_limit: Annotated[Optional[int], typer.Option(
        help="evaluate a sample of this many facts instead of all")] = None,
    threads: Threads = None,
) -> None:
    """Train a demo LM on the demo world, measure it, and write its model card."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from editor_lab.demo_lm.card import write_model_card
    from editor_lab.demo_lm.evaluate import evaluate_demo_lm, format_table
    from editor_lab.demo_lm.train import CHAT_DEMO_LM, DemoLMConfig, build_demo_lm
    from editor_lab.world import WorldConfig, build_world

    setup(threads)
    overrides = {k: v for k, v in {"epochs": epochs, "n_layer": n_layer,
                                   "n_embd": n_embd}.items() if v is not None}
    cfg = replace(CHAT_DEMO_LM if chat else DemoLMConfig(), **overrides)
    out = out or (DEMO_CHAT_LM_PATH if chat else DEMO_LM_PATH)
    start = time.perf_counter()
    summary = build_demo_lm(out, cfg)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    result = evaluate_demo_lm(model, tokenizer, build_world(WorldConfig(seed=cfg.world_seed)),
                              limit=eval_limit)
    summary["build_seconds"] = round(time.perf_counter() - start, 1)
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_model_card(out, summary, result)
    typer.echo(format_table(result))
    typer.echo(f"\nBuilt {out} in {summary['build_seconds'] / 60:.1f} min.")


@app.command("eval-lm")
def eval_lm_cmd(
    model: Annotated[Path, typer.Option(help="LM folder (Hugging Face format)")] = DEMO_LM_PATH,
    world_seed: Annotated[Optional[int], typer.Option(
        help="world seed (default: the one the LM was trained on)")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="write results here")] = None,
    limit: Annotated[Optional[int], typer.Option(
        help="evaluate a deterministic sample of this many facts")] = None,
    card: Annotated[bool, typer.Option(
        help="also write the model card (and eval.json) into the model folder, from its "
             "training_summary.json")] = False,
    threads: Threads = None,
) -> None:
    """Measure what an LM knows of the demo world (greedy decoding): JSON + table."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from editor_lab.demo_lm.evaluate import evaluate_demo_lm, format_table
    from editor_lab.world import WorldConfig, build_world

    setup(threads)
    summary_path = model / "training_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    if card and summary is None:
        raise typer.BadParameter(f"{summary_path} is missing: the card is written from it")
    if world_seed is None:
        world_seed = summary["config"]["world_seed"] if summary else 0
    lm = AutoModelForCausalLM.from_pretrained(model).eval()
    tokenizer = AutoTokenizer.from_pretrained(model)
    result = evaluate_demo_lm(lm, tokenizer, build_world(WorldConfig(seed=world_seed)),
                              limit=limit)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    if card:
        from editor_lab.demo_lm.card import write_model_card

        write_model_card(model, summary, result)
    typer.echo(format_table(result))
    if not all(result["acceptance"].values()):
        raise typer.Exit(code=1)
