"""The shipped editor's model card: what it is, how it was trained, and every measured figure.

Every number in the card is read from the files beside it (``eval.json``, ``analysis.json``,
the editor's training summary), so the card cannot drift from the measurements.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from editor_core.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_editor_config

from .report import acceptance, checks_table, compare, edit_score, task_tables

EDITOR_NAME = "InstructEdit"
ABLATION_NAME = "MEND (no instructions)"
SINGLE_TASK_NAME = "MEND single-task"


def _method_scores(results: dict, tasks: list[str]) -> str:
    lines = ["| method | " + " | ".join(tasks) + " | mean over tasks |",
             "|---|" + "---|" * (len(tasks) + 1)]
    for method, by_task in results.items():
        cells, values = [], []
        for task in tasks:
            if task in by_task:
                mean, se = edit_score(task, by_task[task]["plain"])
                cells.append(f"{mean:.3f} ± {se:.3f}")
                values.append(mean)
            else:
                cells.append("—")
        mean_all = f"{sum(values) / len(values):.3f}" if len(values) == len(tasks) else "—"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {mean_all} |")
    return "\n".join(lines)


def _ablation(results: dict) -> str:
    if ABLATION_NAME not in results:
        return "(no ablation evaluated)"
    lines = ["| task | InstructEdit | MEND (no instructions) | difference | SE of difference |",
             "|---|---|---|---|---|"]
    for row in compare(results, EDITOR_NAME, ABLATION_NAME):
        lines.append(f"| {row.task} | {row.a:.3f} | {row.b:.3f} | {row.diff:+.3f} | "
                     f"{row.se:.3f} |")
    return "\n".join(lines)


def _sequential(chains: dict) -> str:
    if not chains:
        return "(not measured)"
    lines = ["| method | edits in a row | retention of the first 10 (TF) | retention (EM) | "
             "their locality |", "|---|---|---|---|---|"]
    for method, by_n in chains.items():
        for n, r in by_n.items():
            lines.append(f"| {method} | {n} | {r['retention_tf']['mean']:.3f} | "
                         f"{r['retention_em']['mean']:.3f} | {r['locality']['mean']:.3f} |")
    return "\n".join(lines)


def _separation(analyses: dict) -> str:
    lines = ["| editor | nearest task centroid is its own | cosine within task | "
             "cosine between tasks |", "|---|---|---|---|"]
    for name, result in analyses.items():
        sep = result["separation"]
        lines.append(f"| {name} | {sep['nearest_centroid_accuracy']:.3f} | "
                     f"{sep['within_task_cosine']:.3f} | {sep['between_task_cosine']:.3f} |")
    return "\n".join(lines)


def _copy_into(out: Path, files: tuple[tuple[Path, str], ...]) -> None:
    """Copy each ``(source, name)`` to ``out/name``; a file already there is left alone."""
    out.mkdir(parents=True, exist_ok=True)
    for src, name in files:
        if src.resolve() != (out / name).resolve():
            shutil.copyfile(src, out / name)


def ship_editor(out: Path, editor_dir: Path) -> None:
    """Copy a trained editor (its weights and config, e.g. a run's ``best/``) into the folder
    it ships in."""
    _copy_into(out, ((editor_dir / WEIGHTS_FILE, WEIGHTS_FILE),
                     (editor_dir / CONFIG_FILE, CONFIG_FILE)))


def duration(seconds: float) -> str:
    """Seconds as a reader counts them: ``42 s``, ``3.5 min``, ``2.1 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def stage_table(stage_seconds: dict[str, float]) -> str:
    """A markdown table of how long each stage of a build took."""
    lines = ["| stage | time |", "|---|---|"]
    lines += [f"| {stage} | {duration(seconds)} |" for stage, seconds in stage_seconds.items()]
    lines.append(f"| total | {duration(sum(stage_seconds.values()))} |")
    return "\n".join(lines)


def write_editor_card(out: Path, editor_dir: Path, eval_path: Path, analysis_path: Path,
                      regions_png: Path, curves_png: Path, *, held_out: str = "zsre",
                      commands: dict[str, str], notes: str = "",
                      stage_seconds: dict[str, float] | None = None) -> Path:
    """Copy the editor and its evidence into ``out`` and write ``README.md`` there.

    ``stage_seconds`` (the time each stage of ``commands['build']`` took) adds a section
    saying how long the build took.
    """
    ship_editor(out, editor_dir)
    _copy_into(out, ((eval_path, "eval.json"), (analysis_path, "analysis.json"),
                     (regions_png, "edit_regions.png"), (curves_png, "training_curves.png")))
    config = read_editor_config(out)
    training = config["training"]
    tcfg = training["config"]
    evaluation = json.loads((out / "eval.json").read_text())
    results, chains = evaluation["results"], evaluation.get("sequential", {})
    if evaluation.get("lifelong"):
        from .lifelong import lifelong_table

        chains_text = lifelong_table(evaluation["lifelong"])
    else:
        chains_text = _sequential(chains)
    analyses = json.loads((out / "analysis.json").read_text())
    trained = tuple(tcfg["tasks"])
    tasks = [t for t in results[EDITOR_NAME]]
    checks = acceptance(results, EDITOR_NAME, trained=trained, held_out=held_out,
                        ablation=ABLATION_NAME, rivals=("FT-L", SINGLE_TASK_NAME))
    met = sum(c.passed for c in checks)
    size_mb = (out / WEIGHTS_FILE).stat().st_size / 1e6
    editable = ", ".join(f"`{e['name']}`" for e in config["editable"])
    settings = evaluation["settings"]
    model = tcfg.get("model", "checkpoints/demo-lm")
    delta_scaling = config["hypernetwork"].get("delta_scaling", "none")
    card = f"""# InstructEdit for `{model}`

A MEND hypernetwork trained with task instructions (InstructEdit) for
`{model}`. It turns the editing gradient of one fact into a low-rank change of
{editable} (rank {config['hypernetwork']['rank']}, `delta_scaling={delta_scaling}`).
Trained on {', '.join(trained)} of the demo world, balanced; **{held_out} is held out** of
training entirely and measures whether the instructions carry the editor to a task it never
saw. Weights: {size_mb:.1f} MB. Base-model fingerprint `{config['base_model_fingerprint'][:16]}…`
(the service refuses any other model).

```python
from editor_core.checkpoint import load_editor
from editor_core.editor import EditRequest
editor = load_editor("{out}", model, tokenizer)
delta = editor.compute(EditRequest("counterfact", "Plyndti Brynta is a citizen of", "Veiistan",
                                   subject="Plyndti Brynta"))
```

The service applies such deltas through its weight ledger (`WeightLedger.for_editor`), which
can remove each one exactly.

## Training

`{commands['train']}`: {tcfg['steps']} steps of {tcfg['accumulate']} edits
({training['processes']} process(es), {tcfg['threads']} thread(s)). The shipped weights are
the best validation checkpoint, step {training['steps']} (score
{training['best_val_score']:.4f}: mean over tasks of edit success and locality on the
validation split), reached after {training['train_seconds'] / 60:.1f} min of training steps;
{training['skipped_steps']} steps were skipped for non-finite gradients. Loss:
c_edit={tcfg['c_edit']} · NLL ({tcfg['edit_loss']} over answer tokens) on the plain prompt and
training paraphrases + c_loc={tcfg['c_loc']} · KL on locality prompts; lr {tcfg['lr']},
step-size lr {tcfg['step_size_lr']}.

![training curves](training_curves.png)

## Targets

Plain-query protocol, teacher-forced, test split (`{settings['split']}`,
{settings.get('limit') or 'all'} edits per task). The *edit score* is the mean of
reliability, generalization and neighbour locality (for ConvSent, reliability and
generalization are the share of greedy answers with the new sentiment). {met} of
{len(checks)} met.

{checks_table(checks)}

## Edit score per method and task (plain protocol, mean ± SE)

{_method_scores(results, tasks)}

### Instructions ablation: InstructEdit − MEND trained the same way without instructions

{_ablation(results)}

## Full evaluation

Reproduce with `{commands['eval']}`. Every method edits the same model and is restored
exactly after each edit. `_tf` is teacher-forced token accuracy (KnowEdit's convention),
`_em` greedy exact match, `_sentiment` the share of greedy answers with the new sentiment;
locality is the share of locality prompts whose answer tokens keep their argmax.
The *instruction* protocol wraps queries in the task's instruction (the paper's
protocol); *plain* asks them as a service user would.

{task_tables(results)}

## Sequential editing (CounterFact, edits applied one after another)

{chains_text}

## Edit regions

`{commands['analyze']}`: every test edit's weight change (all editable weights, unit norm),
projected on its two principal components. Instructions are meant to send each task's edits
to a region of its own.

![edit regions](edit_regions.png)

{_separation(analyses)}
"""
    if stage_seconds:
        card += (f"\n## Build\n\n`{commands['build']}` built this folder. Time per stage "
                 "(where a rerun resumed the build, a stage finished before counts the run "
                 f"that finished it):\n\n{stage_table(stage_seconds)}\n")
    if notes:
        card += "\n" + notes.strip() + "\n"
    path = out / "README.md"
    path.write_text(card)
    return path
