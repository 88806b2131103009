"""Lifelong editing as a user of the service sees it: greedy answers with many edits active.

Edits of a held-out stream are made one at a time on the pristine model and added to an
edit memory; at each checkpoint a seeded sample of the active edits is asked, greedily,
through the same generation path the service uses:

- reliability: the answer to the plain prompt, up to the end of its line, starts with the
  target; paraphrase: the same on a reserved rephrase no edit was given;
- locality: the greedy answers of namesake ("neighbour"), same-subject and random prompts
  are those of the pristine model. A probe about a subject that another active edit of the
  stream is about may legitimately change: it is excluded, and counted.
- routing: how often the sampled edit's own prompt fired exactly that edit.

Teacher-forced reliability (token accuracy of the target) goes beside. The same sampled
edits are also measured alone — a memory holding only that edit — which is what routing is
compared against.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm import tqdm

from ..data.records import EditRecord
from ..editor import EditRequest, Editor
from ..generation import SamplingParams, TokenStream
from ..ledger import WeightLedger
from ..memory import EditMemory, RoutingConfig
from ..probing import score_targets

ANSWER = SamplingParams(max_new_tokens=16, stop=("\n",))
LOCALITY_KINDS = {"neighbour": "Neighborhood", "same_subject": "Relation_Specificity",
                  "random": "Unrelated"}


def answer(editor: Editor, prompt: str) -> str:
    return TokenStream(editor.model, editor.tokenizer, prompt, ANSWER).run().strip()


def holds(text: str, target: str) -> bool:
    return text.startswith(target.strip())


@dataclass
class StreamResult:
    figures: dict[str, dict]  # checkpoint → figures
    alone: dict[str, float]


def evaluate_stream(editor: Editor, routing: RoutingConfig, stream: Sequence[EditRecord],
                    checkpoints: Sequence[int], sample: int = 300, seed: int = 0,
                    store_tolerance: float | None = None) -> StreamResult:
    """Run the stream through an edit memory on ``editor``'s model (pristine basis), each
    edit in its stored form (truncated to ``store_tolerance``, the stored default if None)."""
    memory = EditMemory(editor.editable, routing)
    ledger = WeightLedger(editor.model, editor.editable, memory)
    memory.attach(editor.model)
    requests = [EditRequest(r.task, r.prompt, r.target_new, subject=r.subject)
                for r in stream]
    edits_by_subject = {}  # subject → indices of the stream's edits about it
    for i, r in enumerate(stream):
        edits_by_subject.setdefault(r.subject, []).append(i)
    rng = random.Random(seed)
    pristine: dict[str, str] = {}

    def pristine_answer(prompt: str) -> str:
        if prompt not in pristine:  # asked before any edit for every sampled edit's probes
            if len(ledger):
                raise RuntimeError("a pristine answer asked for with edits active")
            pristine[prompt] = answer(editor, prompt)
        return pristine[prompt]

    order = sorted(checkpoints)
    samples = {n: rng.sample(range(n), min(sample, n)) for n in order}
    alone_sample = samples[order[-1]]  # paired: the edits the largest count asks
    for i in set().union(*samples.values()):  # pristine answers before any edit
        for p in _probes(stream[i]).values():
            if p is not None:
                pristine_answer(p.prompt)
    cached = {}
    rel = para = 0
    for i in tqdm(alone_sample, desc="each edit alone", unit="edit"):
        cached[i] = editor.compute(requests[i]).compressed(store_tolerance)
        ledger.apply("alone", cached[i])
        with ledger.reading():
            rel += holds(answer(editor, stream[i].prompt), stream[i].target_new)
            para += holds(answer(editor, stream[i].rephrases[-1]), stream[i].target_new)
        ledger.remove("alone")
    alone = {"sampled": len(alone_sample), "reliability": rel / len(alone_sample),
             "paraphrase": para / len(alone_sample)}
    figures: dict[str, dict] = {}
    made = 0
    bar = tqdm(total=order[-1], desc="edits", unit="edit")
    for n in order:
        while made < n:
            delta = cached.pop(made, None) or editor.compute(requests[made]).compressed(
                store_tolerance)
            ledger.apply(f"e{made:06d}", delta)
            made += 1
            bar.update(1)
        figures[str(n)] = _measure(editor, ledger, stream, samples[n], n, edits_by_subject,
                                   pristine_answer)
    bar.close()
    return StreamResult(figures, alone)


def _probes(record: EditRecord):
    """The first locality probe of each kind (None where the record has none)."""
    return {kind: next(iter(record.locality.get(block, ())), None)
            for kind, block in LOCALITY_KINDS.items()}


def _measure(editor: Editor, ledger: WeightLedger, stream: Sequence[EditRecord],
             picked: Sequence[int], n: int, edits_by_subject: dict[str, list[int]],
             pristine_answer
             ) -> dict:
    rel = para = own = 0
    loc = {k: [0, 0] for k in LOCALITY_KINDS}
    excluded = 0
    records = [stream[i] for i in picked]
    subjects = [s for s, edits in edits_by_subject.items() if edits[0] < n]
    with ledger.reading():
        tf = score_targets(editor.model, editor.tokenizer, [r.prompt for r in records],
                           [r.target_new for r in records], editor.max_length)
        for i, r in zip(picked, records):
            stream_answer = TokenStream(editor.model, editor.tokenizer, r.prompt, ANSWER)
            rel += holds(stream_answer.run().strip(), r.target_new)
            own += stream_answer.edits_fired == (f"e{i:06d}",)
            para += holds(answer(editor, r.rephrases[-1]), r.target_new)
            for kind, p in _probes(r).items():
                if p is not None:
                    if any(s in p.prompt and any(j != i and j < n for j in edits_by_subject[s])
                           for s in subjects):
                        excluded += 1  # another active edit is about this probe's subject
                        continue
                    loc[kind][0] += answer(editor, p.prompt) == pristine_answer(p.prompt)
                    loc[kind][1] += 1
    m = len(picked)
    return {"edits": n, "sampled": m, "reliability": rel / m, "paraphrase": para / m,
            "teacher_forced_reliability": sum(s.token_accuracy for s in tf) / m,
            "routed_to_own_edit": own / m,
            **{f"{k}_locality": (a / b if b else None) for k, (a, b) in loc.items()},
            "locality_probes_excluded": excluded}


def stream_table(result: StreamResult) -> str:
    head = ("| active edits | reliability | paraphrase | teacher-forced rel. | own edit fired "
            "| neighbour loc. | same-subject loc. | random loc. | probes excluded |\n"
            "|---|---|---|---|---|---|---|---|---|")
    rows = [head]
    for n, f in result.figures.items():
        rows.append(f"| {n} | {f['reliability']:.3f} | {f['paraphrase']:.3f} | "
                    f"{f['teacher_forced_reliability']:.3f} | {f['routed_to_own_edit']:.3f} | "
                    f"{_fmt(f['neighbour_locality'])} | {_fmt(f['same_subject_locality'])} | "
                    f"{_fmt(f['random_locality'])} | "
                    f"{f['locality_probes_excluded']} |")
    a = result.alone
    rows.append(f"| each alone ({a['sampled']} sampled) | {a['reliability']:.3f} | "
                f"{a['paraphrase']:.3f} | | | | | | |")
    return "\n".join(rows)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
