"""Reading an evaluation: per-task tables, method comparisons with standard errors, and the
acceptance checks the demo editor is held to.

``results`` is the evaluator's ``{method: {task: {protocol: {metric: {mean, se, n}}}}}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Stat = dict[str, float]


def _metric_order(name: str) -> tuple[int, str]:
    order = ("reliability", "generalization", "locality", "portability")
    return next((i for i, p in enumerate(order) if name.startswith(p)), len(order)), name


def task_tables(results: dict[str, dict], protocols: tuple[str, ...] = ("plain", "instruction")
                ) -> str:
    """One markdown table per task: a row per method and protocol, a column per metric."""
    tasks = list(dict.fromkeys(t for by_task in results.values() for t in by_task))
    parts = []
    for task in tasks:
        metrics = sorted({m for by_task in results.values() if task in by_task
                          for p in protocols if p in by_task[task] for m in by_task[task][p]},
                         key=_metric_order)
        n = max((by_task[task][p][m]["n"] for by_task in results.values() if task in by_task
                 for p in protocols if p in by_task[task] for m in by_task[task][p]
                 if m.startswith("reliability")), default=0)
        lines = [f"**{task}** ({n} edits; mean ± standard error)", "",
                 "| method | protocol | " + " | ".join(metrics) + " |",
                 "|---|---|" + "---|" * len(metrics)]
        for method, by_task in results.items():
            for protocol in protocols:
                row = by_task.get(task, {}).get(protocol)
                if row is None:
                    continue
                cells = [f"{row[m]['mean']:.3f} ± {row[m]['se']:.3f}" if m in row else ""
                         for m in metrics]
                lines.append(f"| {method} | {protocol} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def reliability_key(task: str, metrics: dict[str, Stat], kind: str = "reliability") -> str:
    """ConvSent's success is the new sentiment (its answers share wording either way)."""
    sentiment = f"{kind}_sentiment"
    return sentiment if task == "convsent" and sentiment in metrics else f"{kind}_tf"


def edit_score(task: str, metrics: dict[str, Stat]) -> tuple[float, float]:
    """Mean of reliability, generalization and neighbour locality, with its standard error
    (the three treated as independent)."""
    keys = [reliability_key(task, metrics), reliability_key(task, metrics, "generalization"),
            "locality/Neighborhood"]
    present = [metrics[k] for k in keys if k in metrics]
    mean = sum(s["mean"] for s in present) / len(present)
    se = math.sqrt(sum(s["se"] ** 2 for s in present)) / len(present)
    return mean, se


@dataclass(frozen=True)
class Comparison:
    """``a − b`` on the edit score, and whether it exceeds its standard error."""

    task: str
    a: float
    b: float
    se: float

    @property
    def diff(self) -> float:
        return self.a - self.b

    @property
    def beyond_se(self) -> bool:
        return self.diff > self.se


def compare(results: dict, a: str, b: str, protocol: str = "plain") -> list[Comparison]:
    """Per shared task and over their mean (task ``"mean"``)."""
    rows = []
    shared = [t for t in results[a] if t in results[b]]
    for task in shared:
        (ma, sa), (mb, sb) = (edit_score(task, results[m][task][protocol]) for m in (a, b))
        rows.append(Comparison(task, ma, mb, math.hypot(sa, sb)))
    if rows:
        k = len(rows)
        rows.append(Comparison("mean", sum(r.a for r in rows) / k, sum(r.b for r in rows) / k,
                               math.sqrt(sum(r.se ** 2 for r in rows)) / k))
    return rows


@dataclass(frozen=True)
class Check:
    criterion: str
    measured: str
    passed: bool


def _at_least(name: str, value: float | None, target: float) -> Check:
    if value is None:
        return Check(f"{name} ≥ {target}", "not measured", False)
    return Check(f"{name} ≥ {target}", f"{value:.3f}", value >= target)


def acceptance(results: dict, editor: str, *, trained: tuple[str, ...], held_out: str,
               ablation: str, rivals: tuple[str, ...]) -> list[Check]:
    """The demo editor's targets on the plain-query protocol (teacher-forced).

    ``ablation`` (the same editor trained without instructions) must be beaten by more than
    the standard error on the held-out task and on the mean over tasks; ``rivals`` (FT-L,
    single-task MEND) on the edit score of every task they cover.
    """
    checks: list[Check] = []

    def get(task: str, key: str, method: str = editor) -> float | None:
        metric = results.get(method, {}).get(task, {}).get("plain", {}).get(key)
        return None if metric is None else metric["mean"]

    for task in trained:
        m = results[editor][task]["plain"]
        rel, gen = reliability_key(task, m), reliability_key(task, m, "generalization")
        checks.append(_at_least(f"{task} reliability ({rel})", get(task, rel), 0.98))
        checks.append(_at_least(f"{task} generalization ({gen})", get(task, gen), 0.95))
        if "locality/Unrelated" in m:
            checks.append(_at_least(f"{task} random-prompt locality",
                                    get(task, "locality/Unrelated"), 0.99))
        for cat in ("Neighborhood", "Relation_Specificity"):
            if f"locality/{cat}" in m:
                checks.append(_at_least(f"{task} locality/{cat}", get(task, f"locality/{cat}"),
                                        0.95))
        if "portability/Subject_Aliasing_tf" in m:
            checks.append(_at_least(f"{task} alias portability",
                                    get(task, "portability/Subject_Aliasing_tf"), 0.75))
        if task != "convsent":
            tf, em = get(task, "reliability_tf"), get(task, "reliability_em")
            checks.append(Check(f"{task} generative EM within 0.05 of TF reliability",
                                f"{em:.3f} vs {tf:.3f}", abs(tf - em) <= 0.05))
    checks.append(_at_least(f"{held_out} (held out) reliability",
                            get(held_out, "reliability_tf"), 0.95))
    checks.append(_at_least(f"{held_out} (held out) neighbour locality",
                            get(held_out, "locality/Neighborhood"), 0.93))
    held_name = f"{editor} (held-out instruction)"
    if held_name in results:
        for task in (*trained, held_out):
            seen = edit_score(task, results[editor][task]["plain"])[0]
            unseen = edit_score(task, results[held_name][task]["plain"])[0]
            checks.append(Check(f"{task}: held-out instruction within 0.02",
                                f"{unseen:.3f} vs {seen:.3f}", abs(unseen - seen) <= 0.02))
    if ablation in results:
        for row in compare(results, editor, ablation):
            if row.task in (held_out, "mean"):
                checks.append(Check(
                    f"beats {ablation} on {row.task} by more than the SE (edit score)",
                    f"{row.a:.3f} vs {row.b:.3f} (diff {row.diff:+.3f}, SE {row.se:.3f})",
                    row.beyond_se))
    for rival in rivals:
        if rival not in results:
            continue
        for row in compare(results, editor, rival):
            if row.task != "mean":
                checks.append(Check(
                    f"beats {rival} on {row.task} (edit score)",
                    f"{row.a:.3f} vs {row.b:.3f} (diff {row.diff:+.3f}, SE {row.se:.3f})",
                    row.diff > 0))
    return checks


def checks_table(checks: list[Check]) -> str:
    lines = ["| criterion | measured | met |", "|---|---|---|"]
    lines += [f"| {c.criterion} | {c.measured} | {'yes' if c.passed else '**no**'} |"
              for c in checks]
    return "\n".join(lines)
