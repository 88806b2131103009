"""Single edits as the service makes them: the one-shot delta, the judged (refined where
needed) one, and FT-L, side by side on the same records.

Each record's edit is made alone on the pristine model and measured greedily through the
service's generation path, teacher-forced beside:

- reliability: the answer to the plain prompt, up to the end of its line, is exactly the
  target (``answers.is_exact``; ConvSent: opens with one of the record's labelled answers of
  the new sentiment, first clause); paraphrase: the same on the record's last rephrase,
  never fitted, and, split by form, on every rephrase no request carried (held-out
  statement and question); "starts with the target" (``_prefix``) goes beside;
- alias: the same on the record's Subject_Aliasing probes (its subject by another name);
- locality: the greedy answers of the first neighbour, same-subject and random probe are
  those of the unedited model; a changed answer that is not exactly the target is counted
  as *mangled*;
- edit score: the mean of reliability, paraphrase and the locality kinds measured.

"one-shot" is the hypernetwork's stored delta in the edit memory; "judged" is what the
service keeps — one-shot when it holds, else refined within the budget (fitted on the plain
prompt only); FT-L takes Adam steps on the editable weights themselves.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from tqdm import tqdm

from editor_core.answers import starts_with_target
from editor_core.combination import CombinationConfig
from editor_core.data.records import EditCase, carries_sentiment
from editor_core.editor import EditRequest, Editor
from editor_core.live_stack import LiveStack, build_live_stack
from editor_core.probing import score_targets
from editor_core.refine import RefineConfig
from editor_core.request_wordings import request_wordings
from editor_core.routing_config import RoutingConfig

from .methods import FineTuneMethod
from .service_view import _probes, answer, holds

ARMS = ("one-shot", "judged", "FT-L")


def carries_target(text: str, record: EditCase, exact: bool = True) -> bool:
    """The greedy answer is exactly the edit's target (``exact`` False: starts with it;
    ConvSent: carries its new sentiment, judged by the record's own labelled answers)."""
    if record.task == "convsent" and record.answers:
        return carries_sentiment(text, record)
    return holds(text, record.target_new) if exact else starts_with_target(
        text, record.target_new)


def evaluate_single(editor: Editor, routing: RoutingConfig,
                    sets: dict[str, Sequence[EditCase]], refine: RefineConfig,
                    ftl_steps: int = 10, given_rephrases: int = 0) -> dict[str, dict[str, dict]]:
    """{set: {arm: figures}} over every record of every set.

    ``given_rephrases``: how many of a record's rephrases the request carries (every arm
    fits them); the last rephrase is never given, so paraphrase is always measured on text
    no arm fitted.
    """
    stack = build_live_stack(editor, routing, refine, combination=CombinationConfig("memory"))
    ledger, judge = stack.ledger, stack.judge
    ftl = FineTuneMethod(editor.model, editor.tokenizer, editor.editable, steps=ftl_steps,
                         max_length=editor.max_length)
    out: dict[str, dict[str, dict]] = {}
    for name, records in sets.items():
        rows: dict[str, list[dict]] = {arm: [] for arm in ARMS}
        outcomes: dict[str, int] = {}
        for record in tqdm(records, desc=name, unit="edit"):
            probes = {k: p for k, p in _probes(record).items() if p is not None}
            pristine = {k: answer(stack, p.prompt).text
                        for k, p in probes.items()}
            given = record.rephrases[:-1][:given_rephrases]
            relation = record.meta.get("relation")
            derived, contrast = request_wordings(editor, relation, record.subject,
                                                 [record.prompt, *given])
            request = EditRequest(record.task, record.prompt, record.target_new,
                                  subject=record.subject, sentiment=record.sentiment,
                                  rephrases=given, derived=derived, contrast=contrast,
                                  relation=relation)
            searched = time.perf_counter()
            if editor.alias_finder is not None:
                request = editor.alias_finder.widen(request)
            alias_ms = (time.perf_counter() - searched) * 1000
            delta = editor.compute(request).compressed()
            judged = judge.judge(request, delta)
            outcomes[judged.outcome] = outcomes.get(judged.outcome, 0) + 1
            outcomes["time_capped"] = outcomes.get("time_capped", 0) + judged.time_capped
            for arm, chosen in (("one-shot", delta), ("judged", judged.delta)):
                ledger.apply("e", chosen)
                rows[arm].append(_measure(stack, record, probes, pristine, len(given)))
                rows[arm][-1]["ms"] = judged.ms if arm == "judged" else 0.0
                rows[arm][-1]["alias_ms"] = alias_ms if arm == "judged" else 0.0
                ledger.remove("e")
            ftl.apply(record, given)
            try:
                rows["FT-L"].append(_measure(stack, record, probes, pristine, len(given)))
            finally:
                ftl.restore()
        out[name] = {arm: _summary(r) for arm, r in rows.items()}
        out[name]["judged"]["outcomes"] = outcomes
    return out


def _measure(stack: LiveStack, record: EditCase, probes, pristine: dict[str, str],
             given: int) -> dict:
    model, tokenizer = stack.model, stack.tokenizer
    [tf] = score_targets(model, tokenizer, [record.prompt], [record.target_new],
                         stack.editor.max_length)
    plain = answer(stack, record.prompt, record.target_new).text
    row = {"reliability": carries_target(plain, record),
           "reliability_prefix": carries_target(plain, record, exact=False),
           "teacher_forced_reliability": tf.token_accuracy}
    held_out = {"statement": [], "question": []}
    for i, prompt in enumerate(record.rephrases):
        if i < given and i < len(record.rephrases) - 1:
            continue  # the request carried it
        text = answer(stack, prompt, record.target_new).text
        held_out["question" if prompt.rstrip().endswith("?") else "statement"].append(
            carries_target(text, record))
        if i == len(record.rephrases) - 1:
            row["paraphrase"] = carries_target(text, record)
            row["paraphrase_prefix"] = carries_target(text, record, exact=False)
    for form, hits in held_out.items():
        if hits:
            row[f"held_out_{form}"] = sum(hits) / len(hits)
    aliased = record.portability.get("Subject_Aliasing", ())
    if aliased:  # the subject named by an alias no request listed
        row["alias"] = sum(carries_target(answer(stack, p.prompt,
                                                 record.target_new).text, record)
                           for p in aliased) / len(aliased)
    mangled = 0
    for kind, probe in probes.items():
        text = answer(stack, probe.prompt).text
        row[f"{kind}_locality"] = text == pristine[kind]
        mangled += text != pristine[kind] and not carries_target(text, record)
    row["mangled"] = mangled
    return row


def _summary(rows: list[dict]) -> dict:
    keys = sorted({k for r in rows for k in r})
    means = {k: sum(float(r[k]) for r in rows if k in r) / max(sum(k in r for r in rows), 1)
             for k in keys}
    locality = [v for k, v in means.items() if k.endswith("_locality")]
    parts = [means["reliability"], means.get("paraphrase"),
             sum(locality) / len(locality) if locality else None]
    parts = [p for p in parts if p is not None]
    means["edit_score"] = sum(parts) / len(parts)
    means["edits"] = len(rows)
    for key in ("ms", "alias_ms"):
        if key in means:
            timed = sorted(r[key] for r in rows)
            means[f"{key}_p50"] = timed[len(timed) // 2]
            means[f"{key}_p95"] = timed[min(len(timed) - 1, int(len(timed) * 0.95))]
            del means[key]
    return means


def single_table(results: dict[str, dict[str, dict]]) -> str:
    cols = ("reliability", "paraphrase", "held_out_statement", "held_out_question",
            "reliability_prefix", "paraphrase_prefix", "teacher_forced_reliability",
            "alias", "neighbour_locality", "same_subject_locality", "random_locality",
            "mangled",
            "edit_score")
    lines = ["| set | method | edits | " + " | ".join(c.replace("_", " ") for c in cols)
             + " | outcomes (one-shot / refined / fitted / did not hold) | judge ms p50 / p95 "
             "| alias search ms p50 / p95 |",
             "|---|---|---|" + "---|" * (len(cols) + 3)]
    for name, arms in results.items():
        for arm, f in arms.items():
            cells = [f"{f[c]:.3f}" if c in f else "—" for c in cols]
            o = f.get("outcomes")
            outcome = "" if o is None else (f"{o.get('one_shot', 0)} / {o.get('refined', 0)} "
                                            f"/ {o.get('fitted', 0)} / {o.get('did_not_hold', 0)} "
                                            f"({o.get('time_capped', 0)} time-capped)")
            timing = f"{f['ms_p50']:.0f} / {f['ms_p95']:.0f}" if arm == "judged" else ""
            search = (f"{f['alias_ms_p50']:.0f} / {f['alias_ms_p95']:.0f}"
                      if arm == "judged" and "alias_ms_p50" in f else "")
            lines.append(f"| {name} | {arm} | {f['edits']} | " + " | ".join(cells)
                         + f" | {outcome} | {timing} | {search} |")
    return "\n".join(lines)
