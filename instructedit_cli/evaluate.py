"""Evaluating editors: single edits, lifelong streams, analysis and cards."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from editor_core.combination import RIDGE_LAMBDA
from editor_core.refine import RefineConfig
from editor_core.relation_forms import RELATION_FORMS_FILE, RelationForms
from editor_lab.evaluation import SETS_DIR
from service.settings import DEMO_EDITOR_PATH, DEMO_LM_PATH

from .app import (
    DataDir,
    SentimentJudgeName,
    TaskList,
    Threads,
    app,
    config_options,
    judge_named,
    named_path,
    setup,
)

RelationWordings = Annotated[bool, typer.Option(
    help="key and fit edits that name a known relation on its other wordings too, with "
         "contrast keys (the service's relation_wordings)")]
AliasSearch = Annotated[bool, typer.Option(
    help="widen edits with the other names the model knows for their subject (the "
         "service's alias_search)")]


# Replaced by one --refine-* option per field (config_options); the defaults are its own.
REFINE_DEFAULTS = RefineConfig()

EditorFolder = Annotated[Path, typer.Option(
    help="editor folder (with its routing), or 'none': no trained editor (each edit's "
         "gradient step fitted; routing from the model's own text), as the service's "
         "editor setting")]


RelationFormsFolder = Annotated[Optional[Path], typer.Option(
    help="a folder whose relations.json catalogues the relations, instead of the editor's "
         "(the service's relation_forms)")]


def _editor_and_routing(editor: Path, lm, tokenizer, relation_forms: Path | None = None):
    """The editor a command names, on the pristine basis and for the edit memory, with its
    routing (and the relation catalogue ``relation_forms`` names, when given)."""
    from editor_core.checkpoint import load_editor, load_routing
    from editor_core.combination import CombinationConfig
    from editor_core.gradient_editor import NO_EDITOR, gradient_editor
    from editor_core.routing_calibration import self_calibrated_routing

    if str(editor) == NO_EDITOR:
        ed, routing = gradient_editor(lm, tokenizer), None
    else:
        ed = load_editor(editor, lm, tokenizer, basis="pristine",
                         combination=CombinationConfig("memory"))
        routing = load_routing(editor)
    if relation_forms is not None:
        if not (relation_forms / RELATION_FORMS_FILE).is_file():
            raise typer.BadParameter(f"{relation_forms} has no {RELATION_FORMS_FILE}")
        ed.relation_forms = RelationForms.load(relation_forms)
    return ed, routing if routing is not None else self_calibrated_routing(ed)


def _widening(editor, relation_wordings: bool, alias_search: bool) -> None:
    """Turn off what the service's relation_wordings and alias_search settings turn off."""
    if not relation_wordings:
        editor.relation_forms = RelationForms()
    if not alias_search:
        editor.alias_finder = None


@app.command("eval")
def eval_cmd(
    model: Annotated[Path, typer.Option(help="base model (HF format)")] = DEMO_LM_PATH,
    editor: Annotated[Optional[list[str]], typer.Option(
        help="trained editor to evaluate, [NAME=]FOLDER (repeatable)")] = None,
    single_task: Annotated[Optional[list[str]], typer.Option(
        help="an editor trained on one task, TASK=FOLDER (repeatable): evaluated together "
             "as one method on those tasks")] = None,
    ftl: Annotated[bool, typer.Option(help="include the FT-L fine-tuning baseline")] = True,
    sentiment_judge: SentimentJudgeName = "labels",
    data_dir: DataDir = Path("data/world"),
    tasks: TaskList = "counterfact,recent,convsent,zsre",
    split: Annotated[str, typer.Option(help="which split to evaluate")] = "test",
    limit: Annotated[Optional[int], typer.Option(
        help="a deterministic sample of this many edits per task")] = None,
    held_out_instruction: Annotated[bool, typer.Option(
        help="also evaluate each editor with its tasks' held-out descriptions")] = False,
    sequential: Annotated[Optional[str], typer.Option(
        help="lifelong editing: let edits accumulate and measure at these counts, e.g. "
             "10,100,1000,5000 (held-out edits of a lifelong stream)")] = None,
    basis: Annotated[str, typer.Option(
        help="lifelong: which weights each edit is computed on for joint (ridge) "
             "methods: pristine, current or both")] = "pristine",
    ridge_lambda: Annotated[float, typer.Option(
        help="lifelong: λ for the ridge combination of editors trained without one")
    ] = RIDGE_LAMBDA,
    baseline_limit: Annotated[int, typer.Option(
        help="lifelong: the sum-combined baselines stop at this many edits")] = 1000,
    removal_at: Annotated[int, typer.Option(
        help="lifelong: at this many edits, roll back 10% and compare with a fresh build")
                          ] = 1000,
    single: Annotated[bool, typer.Option(
        help="evaluate single edits on the test split (--no-single: lifelong only)")] = True,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="write results here")] = None,
    threads: Threads = None,
) -> None:
    """Evaluate editors and baselines on edit records (JSON + markdown table)."""
    import random

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from editor_core.checkpoint import load_editor
    from editor_core.specs import resolve_editable
    from editor_lab.evaluation.evaluator import Evaluator, markdown_table
    from editor_lab.evaluation.methods import (
        FineTuneMethod,
        HypernetworkMethod,
        NoEditMethod,
        PerTaskMethod,
    )
    from editor_lab.training.examples import load_task_records

    setup(threads)
    lm = AutoModelForCausalLM.from_pretrained(model).eval()
    tokenizer = AutoTokenizer.from_pretrained(model)
    records = load_task_records(data_dir, [t.strip() for t in tasks.split(",")], split)
    if limit is not None:
        records = {t: random.Random(0).sample(r, min(limit, len(r))) for t, r in records.items()}
    methods: list = [NoEditMethod()]
    for name, path in map(named_path, editor or []):
        ed = load_editor(path, lm, tokenizer)
        methods.append(HypernetworkMethod(name, ed))
        if held_out_instruction and ed.use_instructions:
            methods.append(HypernetworkMethod(f"{name} (held-out instruction)", ed,
                                              held_out_instruction=True))
    if single_task:
        per_task = {}
        for task, path in map(named_path, single_task):
            per_task[task] = HypernetworkMethod(task, load_editor(path, lm, tokenizer))
        methods.append(PerTaskMethod("MEND single-task", per_task))
    if ftl:
        methods.append(FineTuneMethod(lm, tokenizer, resolve_editable(lm)))
    evaluator = Evaluator(lm, tokenizer, sentiment_judge=judge_named(sentiment_judge))
    results = {m.name: evaluator.evaluate(m, {t: r for t, r in records.items()
                                              if m.covers(t)}) for m in methods} if single else {}
    lifelong: dict[str, dict] = {}
    if sequential:
        lifelong = _lifelong(lm, tokenizer, list(map(named_path, editor or [])), data_dir,
                             sorted(int(n) for n in sequential.split(",")), basis,
                             ridge_lambda, baseline_limit, removal_at)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        settings = {"model": str(model), "data_dir": str(data_dir), "split": split,
                    "limit": limit, "tasks": list(records), "sequential": sequential,
                    "basis": basis, "ridge_lambda": ridge_lambda,
                    "baseline_limit": baseline_limit, "removal_at": removal_at}
        json_path.write_text(json.dumps({"results": results, "lifelong": lifelong,
                                         "settings": settings}, indent=2))
    if results:
        typer.echo(markdown_table(results))
    if lifelong:
        from editor_lab.evaluation.lifelong import lifelong_table

        typer.echo("\n" + lifelong_table(lifelong))


def _lifelong(lm, tokenizer, editors: list[tuple[str, Path]], data_dir: Path,
              checkpoints: list[int], basis: str, ridge_lambda: float, baseline_limit: int,
              removal_at: int) -> dict[str, dict]:
    """Each editor as it was trained, and beside it the other way of combining its edits."""
    from editor_core.checkpoint import load_editor, read_editor_config
    from editor_core.combination import CombinationConfig
    from editor_lab.evaluation.lifelong import LifelongEvaluator, LifelongMethod
    from editor_lab.world import WorldConfig, build_world
    from editor_lab.world.stream import lifelong_stream

    if basis not in ("pristine", "current", "both"):
        raise typer.BadParameter("basis is pristine, current or both")
    stream = lifelong_stream(build_world(WorldConfig()), data_dir, max(checkpoints))
    evaluator = LifelongEvaluator(stream)
    bases = ["pristine", "current"] if basis == "both" else [basis]
    out: dict[str, dict] = {}
    for name, path in editors:
        trained = CombinationConfig.from_json(read_editor_config(path).get("combination", {}))
        ridge = trained if trained.kind == "ridge" else CombinationConfig("ridge",
                                                                          ridge_lambda)
        runs = [(f"{name}, ridge, {b} basis", ridge, b, checkpoints) for b in bases]
        baseline = [n for n in checkpoints if n <= baseline_limit]
        if trained.kind == "ridge":
            runs.append((f"{name}, plain sum", CombinationConfig("sum"), "pristine", baseline))
        else:
            runs.append((f"{name}, sequential (sum, current basis)", trained, "current",
                         baseline))
        for label, combination, edit_basis, counts in runs:
            if not counts:
                continue
            ed = load_editor(path, lm, tokenizer, basis=edit_basis, combination=combination)
            method = LifelongMethod(label, ed, lambda ed=ed: ed.combination.combiner(
                ed.editable), edit_basis)
            out[label] = evaluator.run(method, counts,
                                       removal_at if removal_at in counts else None)
    return out


@app.command("eval-stream")
@config_options(RefineConfig, "refine", "refinement")
def eval_stream_cmd(
    counts: Annotated[str, typer.Option(help="active edits to measure at")] = "10,100,1000",
    sample: Annotated[int, typer.Option(help="edits asked at each count")] = 200,
    stream_kind: Annotated[str, typer.Option(
        "--stream", help="'held-out' (test/validation CounterFact, then new people named "
        "from the world's name parts) or 'unfamiliar' (new people named with syllables the "
        "world never uses)")] = "held-out",
    combinations: Annotated[str, typer.Option(
        help="side by side: memory (routed), ridge, sum (merged)")] = "memory",
    ridge_lambda: Annotated[float, typer.Option(help="λ of the ridge combination")
                            ] = RIDGE_LAMBDA,
    editor: EditorFolder = DEMO_EDITOR_PATH,
    model: Annotated[Path, typer.Option(help="base model (HF format)")] = DEMO_LM_PATH,
    data_dir: DataDir = Path("data/world"),
    seed: Annotated[int, typer.Option(help="stream order and samples")] = 1,
    store_tolerance: Annotated[Optional[float], typer.Option(
        help="relative error each stored edit is truncated to (default: the store's)")] = None,
    alone_tolerances: Annotated[str, typer.Option(
        help="also measure each edit alone stored at these tolerances (comma-separated)")
    ] = "",
    removal_at: Annotated[Optional[int], typer.Option(
        help="at this count, roll back 10% of the memory's edits and check the answers "
             "against a memory rebuilt from the rest, then all against the pristine model")
    ] = None,
    relation_forms: RelationFormsFolder = None,
    relation_wordings: RelationWordings = True,
    alias_search: AliasSearch = True,
    without_subjects: Annotated[bool, typer.Option(
        help="send the edits without their subject (the memory gates on activations alone)")
    ] = False,
    refine: Annotated[bool, typer.Option(
        help="judge each edit as the service does: refined where the one-shot delta does "
             "not hold, within the --refine-* budget; always, with --editor none")] = False,
    refinement: RefineConfig = REFINE_DEFAULTS,
    chat: Annotated[bool, typer.Option(
        help="send and ask as a chat user does, through the model's chat template: each "
             "edit is its relation's question in a user's turn, its held-out question the "
             "relation's reserved one, every probe a user's turn")] = False,
    save_stream_to: Annotated[Optional[Path], typer.Option(
        "--save-stream", help="also write the stream (KnowEdit JSON, readable by other "
                              "editing tools)")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="write results here")] = None,
    threads: Threads = None,
) -> None:
    """Lifelong editing as the service answers: a held-out stream into the edit memory
    (and the merged combinations beside it), greedy reliability, paraphrase and locality at
    each count (JSON + table)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from editor_core.chat_template import chat_prompt
    from editor_lab.evaluation.service_view import StreamSettings, evaluate_stream, stream_table
    from editor_lab.world import WorldConfig, build_world
    from editor_lab.world.stream import (
        asked_in_chat,
        asks_edited_fact,
        lifelong_stream,
        save_stream,
        unfamiliar_stream,
    )

    setup(threads)
    checkpoints = tuple(sorted(int(n) for n in counts.split(",")))
    settings = StreamSettings(
        checkpoints, sample, seed, tuple(c.strip() for c in combinations.split(",")),
        ridge_lambda, store_tolerance,
        tuple(float(t) for t in alone_tolerances.split(",") if t.strip()), removal_at,
        without_subjects=without_subjects,
        refine=refinement if refine or str(editor) == "none" else None)
    world = build_world(WorldConfig())
    if stream_kind == "held-out":
        stream = lifelong_stream(world, data_dir, checkpoints[-1], seed)
    elif stream_kind == "unfamiliar":
        stream = unfamiliar_stream(world, checkpoints[-1], seed)
    else:
        raise typer.BadParameter(f"unknown stream {stream_kind!r}; use held-out or unfamiliar")
    lm = AutoModelForCausalLM.from_pretrained(model).eval()
    tokenizer = AutoTokenizer.from_pretrained(model)
    if chat:
        stream = asked_in_chat(stream, world, lambda q: chat_prompt(
            tokenizer, [{"role": "user", "content": q}]))
    if save_stream_to is not None:
        save_stream(stream, save_stream_to)
    ed, routing = _editor_and_routing(editor, lm, tokenizer, relation_forms)
    _widening(ed, relation_wordings, alias_search)
    result = evaluate_stream(ed, routing, stream, settings, asks_edited_fact)
    result.settings["stream"] = stream_kind
    result.settings["asked_in_chat"] = chat
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        json_path.with_suffix(".md").write_text(stream_table(result) + "\n")
    typer.echo(stream_table(result))


@app.command("eval-single")
@config_options(RefineConfig, "refine", "refine")
def eval_single_cmd(
    sets: Annotated[str, typer.Option(
        help="what to edit: tasks of the split, 'unfamiliar' (new people named with "
             "syllables the world never uses), 'zsre-real' (--real-zsre's records) and "
             "'real-text' (--real-text's facts about real-world entities)")
    ] = "counterfact,recent,convsent,zsre,unfamiliar,zsre-real,real-text",
    split: Annotated[str, typer.Option(help="which split of the tasks")] = "test",
    limit: Annotated[Optional[int], typer.Option(
        help="a deterministic sample of this many edits per set")] = None,
    real_zsre: Annotated[Path, typer.Option(help="real zsRE records (MEND's eval format)")
                         ] = Path("../shared/data/zsre_real_sample.json"),
    real_text: Annotated[Path, typer.Option(help="hand-written real-world facts (KnowEdit "
                                            "CounterFact format)")] = SETS_DIR / "real_text.json",
    refine: RefineConfig = REFINE_DEFAULTS,
    editor: EditorFolder = DEMO_EDITOR_PATH,
    model: Annotated[Path, typer.Option(help="base model (HF format)")] = DEMO_LM_PATH,
    data_dir: DataDir = Path("data/world"),
    seed: Annotated[int, typer.Option(help="samples and the unfamiliar set")] = 1,
    relation_forms: RelationFormsFolder = None,
    relation_wordings: RelationWordings = True,
    alias_search: AliasSearch = True,
    given_rephrases: Annotated[int, typer.Option(
        help="rephrases each request carries (fitted by every arm); the last is never "
             "given and measures paraphrase")] = 0,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="write results here")] = None,
    threads: Threads = None,
) -> None:
    """Single edits as the service makes them: one-shot against judged (refined where it
    did not hold) against FT-L, greedy and teacher-forced (JSON + table)."""
    import random

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from editor_core.data.knowedit import load_edit_records
    from editor_lab.evaluation.single_view import evaluate_single, single_table
    from editor_lab.training.examples import load_task_records
    from editor_lab.world import WorldConfig, build_world
    from editor_lab.world.stream import unfamiliar_stream

    setup(threads)
    names = [n.strip() for n in sets.split(",")]
    tasks = [n for n in names if n not in ("unfamiliar", "zsre-real", "real-text")]
    records = dict(load_task_records(data_dir, tasks, split)) if tasks else {}
    if "unfamiliar" in names:
        records["unfamiliar"] = unfamiliar_stream(build_world(WorldConfig()), limit or 100,
                                                  seed)
    if "zsre-real" in names:
        records["zsre-real"] = load_edit_records(real_zsre, "zsre")  # warns of what it skips
    if "real-text" in names:
        records["real-text"] = load_edit_records(real_text, "counterfact")
    if limit is not None:
        records = {k: random.Random(seed).sample(list(r), min(limit, len(r)))
                   for k, r in records.items()}
    lm = AutoModelForCausalLM.from_pretrained(model).eval()
    tokenizer = AutoTokenizer.from_pretrained(model)
    ed, routing = _editor_and_routing(editor, lm, tokenizer, relation_forms)
    _widening(ed, relation_wordings, alias_search)
    results = evaluate_single(ed, routing, records, refine,
                              given_rephrases=given_rephrases)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"results": results, "settings": {
            "sets": names, "split": split, "limit": limit, "seed": seed,
            "given_rephrases": given_rephrases,
            "refine": dataclasses.asdict(refine)}}, indent=2) + "\n")
        json_path.with_suffix(".md").write_text(single_table(results) + "\n")
    typer.echo(single_table(results))


@app.command("analyze")
def analyze_cmd(
    editor: Annotated[list[str], typer.Option(
        help="trained editor, [NAME=]FOLDER (repeatable: one panel each)")],
    model: Annotated[Path, typer.Option(help="base model (HF format)")] = DEMO_LM_PATH,
    data_dir: DataDir = Path("data/world"),
    tasks: TaskList = "counterfact,recent,convsent,zsre",
    split: Annotated[str, typer.Option(help="which split's edits to analyse")] = "test",
    limit: Annotated[int, typer.Option(help="edits per task (deterministic sample)")] = 60,
    png: Annotated[Path, typer.Option(help="where to draw the picture")] = Path(
        "runs/edit_regions.png"),
    json_path: Annotated[Optional[Path], typer.Option("--json", help="write results here")] = None,
    threads: Threads = None,
) -> None:
    """Edit-region analysis: PCA of each task's edit directions, one panel per editor."""
    import random

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from editor_core.checkpoint import load_editor
    from editor_lab.evaluation.analysis import analyze_editor, plot_edit_regions
    from editor_lab.training.examples import load_task_records

    setup(threads)
    lm = AutoModelForCausalLM.from_pretrained(model).eval()
    tokenizer = AutoTokenizer.from_pretrained(model)
    records = load_task_records(data_dir, [t.strip() for t in tasks.split(",")], split)
    records = {t: random.Random(0).sample(r, min(limit, len(r))) for t, r in records.items()}
    analyses = {}
    for name, path in map(named_path, editor):
        analyses[name] = analyze_editor(load_editor(path, lm, tokenizer), records, desc=name)
    png.parent.mkdir(parents=True, exist_ok=True)
    plot_edit_regions(analyses, png)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(analyses, indent=1) + "\n")
    typer.echo("| editor | nearest-centroid accuracy | cosine within task | cosine between |")
    typer.echo("|---|---|---|---|")
    for name, result in analyses.items():
        sep = result["separation"]
        typer.echo(f"| {name} | {sep['nearest_centroid_accuracy']:.3f} | "
                   f"{sep['within_task_cosine']:.3f} | {sep['between_task_cosine']:.3f} |")
    typer.echo(f"picture: {png}")


@app.command("editor-card")
def editor_card_cmd(
    run: Annotated[Path, typer.Option(help="the editor's training run (uses run/best)")] = Path(
        "runs/demo-editor"),
    eval_json: Annotated[Path, typer.Option("--eval", help="instructedit eval --json output")
                         ] = Path("runs/demo-editor-eval.json"),
    analysis: Annotated[Path, typer.Option(help="instructedit analyze --json output")] = Path(
        "runs/demo-editor-analysis.json"),
    regions: Annotated[Path, typer.Option(help="instructedit analyze --png output")] = Path(
        "runs/demo-editor-regions.png"),
    notes: Annotated[Optional[Path], typer.Option(help="markdown appended to the card")] = None,
    out: Annotated[Path, typer.Option(help="checkpoint folder to write")] = Path(
        "checkpoints/demo-editor"),
) -> None:
    """Ship a trained editor: copy it with its evaluation and write its model card."""
    from editor_lab.evaluation.card import write_editor_card

    commands = {"train": "instructedit train --config configs/demo-editor.yaml",
                "eval": "scripts/build-demo-editor (its eval step)",
                "analyze": "scripts/build-demo-editor (its analyze step)"}
    path = write_editor_card(out, run / "best", eval_json, analysis, regions,
                             run / "training_curves.png", commands=commands,
                             notes=notes.read_text() if notes else "")
    typer.echo(f"wrote {path}")
