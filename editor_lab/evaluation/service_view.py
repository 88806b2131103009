"""Lifelong editing as a user of the service sees it: greedy answers with many edits active.

Edits of a held-out stream are computed one at a time on the pristine model, in their
stored form, and added to one ledger per combination — the routed edit memory, and the
merged ``ridge`` and ``sum`` it replaced — each on its own copy of the model. At each count
a seeded sample of the active edits is asked, greedily, through the service's generation
path:

- reliability: the answer to the plain prompt, up to the end of its line, is exactly the
  target (``answers.is_exact``; a trailing period allowed); paraphrase: the same on a
  reserved rephrase no edit was given; "starts with the target" goes beside each;
- locality: the greedy answers of namesake ("neighbour"), same-subject and random prompts
  are those of the pristine model — the first neighbour and random probe of each sampled
  edit, and every same-subject probe of a second sample among the edits that have them. A
  probe that asks a fact another active edit of the stream changes may legitimately
  change: it is excluded, and counted;
- routing (memory only): how often the sampled edit's own prompt fired exactly that edit.

Teacher-forced reliability (token accuracy of the target) goes beside. Each count's sampled
edits are also measured alone — a memory holding only that edit — which is what routing is
compared against, optionally at other store tolerances too. At the removal count
a random share of the memory's edits is rolled back and its answers compared with a memory
rebuilt from the rest in another order, then everything is rolled back and compared with
the pristine model bit for bit.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tqdm import tqdm
from transformers import PreTrainedModel

from editor_core.answers import is_exact, starts_with_target
from editor_core.combination import RIDGE_LAMBDA, ActiveEdit, CombinationConfig
from editor_core.data.records import EditCase, Probe
from editor_core.delta import EditDelta
from editor_core.editor import EditRequest, Editor
from editor_core.generation import SamplingParams, TokenStream
from editor_core.gradient_editor import is_gradient_editor
from editor_core.ledger import WeightLedger
from editor_core.live_stack import LiveStack, build_live_stack
from editor_core.outcomes import OUTCOMES
from editor_core.probing import score_targets
from editor_core.refine import RefineConfig
from editor_core.request_wordings import request_wordings
from editor_core.routing_config import RoutingConfig

ANSWER = SamplingParams(max_new_tokens=16, stop=("\n",))
LOCALITY_KINDS = {"neighbour": "Neighborhood", "same_subject": "Relation_Specificity",
                  "random": "Unrelated"}
COMBINATIONS = ("memory", "ridge", "sum")


def answer(stack: LiveStack, prompt: str, target: str | None = None) -> TokenStream:
    """The greedy answer the service gives, up to the end of its line (run; ``.text`` and
    ``.edits_fired`` are set); long enough to hold ``target`` whole."""
    params = ANSWER
    tokenizer = stack.tokenizer
    if target is not None:
        needed = len(tokenizer(target, add_special_tokens=False)["input_ids"]) + 4
        params = dataclasses.replace(ANSWER, max_new_tokens=max(ANSWER.max_new_tokens, needed))
    stream = TokenStream(stack.model, tokenizer, prompt, params, stack.routing)
    stream.run()
    return stream


def holds(text: str, target: str) -> bool:
    """The user's measure: the answer's line is exactly the target."""
    return is_exact(text, target)


def _subject_named(prompt: str, record: EditCase) -> bool:
    return record.subject in prompt


@dataclass(frozen=True)
class StreamSettings:
    """What one service-view run measures."""

    checkpoints: tuple[int, ...]
    sample: int = 300
    seed: int = 0
    combinations: tuple[str, ...] = ("memory",)
    ridge_lambda: float = RIDGE_LAMBDA
    store_tolerance: float | None = None  # the store's default when None
    alone_tolerances: tuple[float, ...] = ()  # each edit alone, also stored at these
    removal_at: int | None = None  # roll back a share of the memory's edits at this count
    removal_share: float = 0.1
    without_subjects: bool = False  # edits sent without their subject: activation-only gate
    refine: RefineConfig | None = None  # judge each edit as the service does (memory only)

    def __post_init__(self) -> None:
        unknown = set(self.combinations) - set(COMBINATIONS)
        if unknown or not self.combinations:
            raise ValueError(f"combinations must be among {COMBINATIONS}, got "
                             f"{self.combinations}")
        if self.removal_at is not None and self.removal_at not in self.checkpoints:
            raise ValueError(f"the removal count {self.removal_at} must be a checkpoint")
        if "memory" not in self.combinations and (self.removal_at is not None
                                                  or self.refine is not None):
            raise ValueError("the removal check and judged edits need the edit memory")


@dataclass
class StreamResult:
    figures: dict[str, dict[str, dict]]  # combination → count → figures
    alone: dict[str, dict[str, dict]]  # count → store tolerance ("default", or one) → figures
    removal: dict | None = None
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"figures": self.figures, "alone": self.alone, "removal": self.removal,
                "settings": self.settings}


@dataclass
class _Arm:
    """One combination: the stack it serves (merged ones on their own model copy)."""

    name: str
    stack: LiveStack

    @property
    def model(self) -> PreTrainedModel:
        return self.stack.model

    @property
    def ledger(self) -> WeightLedger:
        return self.stack.ledger


def _arms(editor: Editor, routing: RoutingConfig, settings: StreamSettings) -> list[_Arm]:
    """Merged combinations on copies of the pristine model (taken before any hook is on
    it); the edit memory on the editor's own model, whose weights stay, judging each edit
    when ``settings.refine`` says so. The editor computes deltas for the memory (they
    carry their routing keys)."""
    arms = []
    for name in settings.combinations:
        if name != "memory":
            config = CombinationConfig(name, settings.ridge_lambda if name == "ridge" else None)
            arms.append(_Arm(name, build_live_stack(editor, combination=config,
                                                    model=copy.deepcopy(editor.model))))
    if "memory" in settings.combinations:
        arms.insert(0, _Arm("memory", build_live_stack(
            editor, routing, settings.refine, combination=CombinationConfig("memory"))))
    return arms


def _probes(record: EditCase) -> dict[str, Probe | None]:
    """The first locality probe of each kind (None where the record has none)."""
    return {kind: next(iter(record.locality.get(block, ())), None)
            for kind, block in LOCALITY_KINDS.items()}


def _locality_probes(stream: Sequence[EditCase], picked: Sequence[int],
                     subject_picked: Sequence[int]) -> list[tuple[int, str, Probe]]:
    """(owner edit, kind, probe): the first neighbour and random probe of each picked edit,
    and every same-subject probe of the edits picked for it (a subject's other facts are
    often edited too, so one probe each would leave too few to count)."""
    out = [(i, kind, p) for i in picked for kind, p in _probes(stream[i]).items()
           if p is not None and kind != "same_subject"]
    block = LOCALITY_KINDS["same_subject"]
    return out + [(i, "same_subject", p) for i in subject_picked
                  for p in stream[i].locality.get(block, ())]


def evaluate_stream(editor: Editor, routing: RoutingConfig, stream: Sequence[EditCase],
                    settings: StreamSettings,
                    asks_edited_fact: Callable[[str, EditCase], bool] = _subject_named
                    ) -> StreamResult:
    """Run the stream into each combination of ``settings`` (edits computed on the
    pristine basis). ``asks_edited_fact(prompt, record)`` tells whether a locality prompt
    asks the fact ``record`` edits (then it is excluded while that edit is active); by
    default any prompt naming the record's subject does."""
    if editor.follows_live_weights:
        raise ValueError("the service view computes edits on the pristine basis")
    if is_gradient_editor(editor) and settings.refine is None:
        raise ValueError("edits without a trained editor are made by judging them: refine")
    order = sorted(settings.checkpoints)
    if order[-1] > len(stream):
        raise ValueError(f"{order[-1]} edits asked for, the stream has {len(stream)}")
    arms = _arms(editor, routing, settings)
    with_keys = "ridge" in settings.combinations
    requests = [_request(editor, r, settings.without_subjects) for r in stream]
    if editor.alias_finder is not None:
        requests = [editor.alias_finder.widen(r) for r in tqdm(requests, desc="aliases",
                                                                unit="edit")]
    rng = random.Random(settings.seed)
    samples = {n: rng.sample(range(n), min(settings.sample, n)) for n in order}
    with_subject_probes = [i for i, r in enumerate(stream)
                           if r.locality.get(LOCALITY_KINDS["same_subject"])]
    probes = {}
    for n in order:
        among = [i for i in with_subject_probes if i < n]
        probes[n] = _locality_probes(stream, samples[n],
                                     rng.sample(among, min(settings.sample, len(among))))
    tokenizer = editor.tokenizer
    pristine = {p: answer(arms[0].stack, p).text
                for p in sorted({p.prompt for ps in probes.values() for _, _, p in ps})}

    def compute(i: int) -> EditDelta:
        """Edit ``i`` as computed (keys too where ridge needs them), not yet stored."""
        delta = editor.compute(requests[i])
        if with_keys:
            delta = EditDelta(delta.factors, 1, editor.ridge_inputs([requests[i]]), delta.routes)
        return delta

    memory_arm = arms[0]  # the memory when it is measured
    judge = memory_arm.stack.judge
    outcome_of: dict[int, str] = {}  # each edit's first judgement (a cached one is re-judged)

    def judged(i: int, delta: EditDelta) -> EditDelta:
        """What the service keeps of edit ``i`` against the memory as it stands."""
        if judge is None:
            return delta
        verdict = judge.judge(requests[i], delta)
        outcome_of.setdefault(i, verdict.outcome)
        return verdict.delta
    removal_prompts, removal_targets = _removal_probes(
        stream, samples[settings.removal_at or order[-1]])
    pristine_scores = _snapshot(memory_arm, tokenizer, editor.max_length, removal_prompts,
                                removal_targets) if settings.removal_at else None
    cached, alone = _alone(memory_arm, tokenizer, stream, samples, compute, settings, judged)
    figures: dict[str, dict[str, dict]] = {a.name: {} for a in arms}
    removal = None
    made = 0
    bar = tqdm(total=order[-1], desc="edits", unit="edit")
    for n in order:
        while made < n:
            delta = judged(made, cached.pop(made, None)
                           or compute(made).compressed(settings.store_tolerance))
            for arm in arms:
                arm.ledger.apply(_edit_id(made), delta)
            made += 1
            bar.update(1)
        kept, excluded = _kept(stream, probes[n], n, asks_edited_fact)
        for arm in arms:
            figures[arm.name][str(n)] = _measure(arm, tokenizer, editor.max_length, stream,
                                                 samples[n], n, kept, pristine)
            figures[arm.name][str(n)]["locality_probes_excluded"] = excluded
        if judge is not None:
            made_so_far = [outcome_of[j] for j in range(n)]
            figures["memory"][str(n)]["outcomes"] = {
                o: made_so_far.count(o) for o in OUTCOMES}
        if n == settings.removal_at:
            removal = _removal_check(memory_arm, tokenizer, editor.max_length, settings,
                                     removal_prompts, removal_targets, pristine_scores)
    bar.close()
    return StreamResult(figures, alone, removal, {
        "checkpoints": order, "sample": settings.sample, "seed": settings.seed,
        "combinations": list(settings.combinations), "ridge_lambda": settings.ridge_lambda,
        "store_tolerance": settings.store_tolerance, "edits_basis": "pristine",
        "removal_at": settings.removal_at, "removal_share": settings.removal_share,
        "without_subjects": settings.without_subjects,
        "refine": None if settings.refine is None else vars(settings.refine)})


def _request(editor: Editor, record: EditCase, without_subjects: bool) -> EditRequest:
    """The request the service makes of ``record`` sent as its prompt: with the wordings
    the edits handler adds (the relation's, chat forms, contrast keys)."""
    relation = record.meta.get("relation")
    derived, contrast = request_wordings(editor, relation, record.subject, [record.prompt])
    return EditRequest(record.task, record.prompt, record.target_new,
                       subject=None if without_subjects else record.subject,
                       derived=derived, contrast=contrast, relation=relation)


def _edit_id(i: int) -> str:
    return f"e{i:06d}"


def _alone(arm: _Arm, tokenizer, stream: Sequence[EditCase], samples: dict[int, list[int]],
           compute: Callable[[int], EditDelta], settings: StreamSettings,
           judged: Callable[[int, EditDelta], EditDelta]
           ) -> tuple[dict[int, EditDelta], dict[str, dict[str, dict]]]:
    """Each sampled edit by itself (stored at the store tolerance, and at each extra one);
    returns the stored deltas for reuse, and per count (its sample, paired with the routed
    figures) the figures per tolerance."""
    tolerances: list[float | None] = [settings.store_tolerance, *settings.alone_tolerances]
    hits: dict[int, dict[float | None, tuple[bool, bool]]] = {}
    cached: dict[int, EditDelta] = {}
    for i in tqdm(sorted(set().union(*samples.values())), desc="each edit alone",
                  unit="edit"):
        record, computed = stream[i], compute(i)
        hits[i] = {}
        for t in tolerances:
            delta = judged(i, computed.compressed(t))
            if t == settings.store_tolerance:
                cached[i] = delta
            arm.ledger.apply("alone", delta)
            hits[i][t] = (holds(answer(arm.stack, record.prompt,
                                       record.target_new).text, record.target_new),
                          holds(answer(arm.stack, record.rephrases[-1],
                                       record.target_new).text, record.target_new))
            arm.ledger.remove("alone")
    return cached, {str(n): {("default" if t is None else str(t)): {
        "sampled": len(picked),
        "reliability": sum(hits[i][t][0] for i in picked) / max(len(picked), 1),
        "paraphrase": sum(hits[i][t][1] for i in picked) / max(len(picked), 1)}
        for t in tolerances} for n, picked in samples.items()}


def _kept(stream: Sequence[EditCase], probes: list[tuple[int, str, Probe]], n: int,
          asks_edited_fact: Callable[[str, EditCase], bool]
          ) -> tuple[list[tuple[str, Probe]], int]:
    """The probes no other of the first ``n`` edits legitimately changes (an edit of the
    fact the probe asks), and how many were left out."""
    by_subject: dict[str, list[int]] = {}
    for j in range(n):
        by_subject.setdefault(stream[j].subject, []).append(j)
    kept = []
    for owner, kind, probe in probes:
        if not any(subject in probe.prompt and any(
                j != owner and asks_edited_fact(probe.prompt, stream[j]) for j in edits)
                   for subject, edits in by_subject.items()):
            kept.append((kind, probe))
    return kept, len(probes) - len(kept)


def _measure(arm: _Arm, tokenizer, max_length: int, stream: Sequence[EditCase],
             picked: Sequence[int], n: int, probes: list[tuple[str, Probe]],
             pristine: dict[str, str]) -> dict:
    rel = para = own = rel_prefix = para_prefix = 0
    aliased = [0, 0]  # exact answers, alias probes
    loc = {k: [0, 0] for k in LOCALITY_KINDS}
    records = [stream[i] for i in picked]
    with arm.ledger.reading():
        tf = score_targets(arm.model, tokenizer, [r.prompt for r in records],
                           [r.target_new for r in records], max_length)
        for i, r in zip(picked, records):
            plain = answer(arm.stack, r.prompt, r.target_new)
            rel += holds(plain.text, r.target_new)
            rel_prefix += starts_with_target(plain.text, r.target_new)
            own += plain.edits_fired == (_edit_id(i),)
            other = answer(arm.stack, r.rephrases[-1], r.target_new).text
            para += holds(other, r.target_new)
            para_prefix += starts_with_target(other, r.target_new)
            for probe in r.portability.get("Subject_Aliasing", ()):  # an alias no one sent
                aliased[0] += holds(answer(arm.stack, probe.prompt,
                                           r.target_new).text, r.target_new)
                aliased[1] += 1
        misses = []  # locality probes whose answer changed: what fired on them
        for kind, p in probes:
            got = answer(arm.stack, p.prompt)
            kept = got.text == pristine[p.prompt]
            loc[kind][0] += kept
            loc[kind][1] += 1
            if not kept:
                misses.append({"kind": kind, "prompt": p.prompt, "pristine": pristine[p.prompt],
                               "answer": got.text, "edits_fired": list(got.edits_fired)})
    m = len(picked)
    return {"edits": n, "sampled": m, "reliability": rel / m, "paraphrase": para / m,
            "reliability_prefix": rel_prefix / m, "paraphrase_prefix": para_prefix / m,
            "teacher_forced_reliability": sum(s.token_accuracy for s in tf) / m,
            "routed_to_own_edit": own / m if arm.name == "memory" else None,
            "alias": aliased[0] / aliased[1] if aliased[1] else None, "alias_probes": aliased[1],
            **{f"{k}_locality": (a / b if b else None) for k, (a, b) in loc.items()},
            **{f"{k}_probes": b for k, (_, b) in loc.items()},
            "locality_misses": misses}


def _snapshot(arm: _Arm, tokenizer, max_length: int, prompts: list[str], targets: list[str]
              ) -> tuple[list[str], list[float]]:
    """Greedy answers and teacher-forced log-probs of the targets: what must match."""
    with arm.ledger.reading():
        texts = [answer(arm.stack, p).text for p in prompts]
        scores = score_targets(arm.model, tokenizer, prompts, targets, max_length)
    return texts, [s.logprob for s in scores]


def _removal_probes(stream: Sequence[EditCase], picked: Sequence[int]
                    ) -> tuple[list[str], list[str]]:
    """Every prompt of the picked edits (plain, paraphrase, locality), each scored on the
    edit's target: what a rollback must give back exactly."""
    prompts, targets = [], []
    for i in picked:
        r = stream[i]
        for p in (r.prompt, r.rephrases[-1],
                  *(q.prompt for q in _probes(r).values() if q is not None)):
            prompts.append(p)
            targets.append(r.target_new)
    return prompts, targets


def _removal_check(arm: _Arm, tokenizer, max_length: int, settings: StreamSettings,
                   prompts: list[str], targets: list[str],
                   pristine: tuple[list[str], list[float]]) -> dict:
    """Roll back a random share; compare with a memory rebuilt from the rest in reverse
    order; roll back all and compare with the model before any edit; restore the set."""
    ledger = arm.ledger
    active = ledger.active
    digest_before = ledger.live_digest()
    rng = random.Random(settings.seed + 1)
    removed = rng.sample([e.edit_id for e in active],
                         round(len(active) * settings.removal_share))
    ledger.remove_many(removed)
    after_rollback = _snapshot(arm, tokenizer, max_length, prompts, targets)
    gone = set(removed)
    rest = [e for e in reversed(active) if e.edit_id not in gone]
    ledger.load([ActiveEdit(e.edit_id, k, e.delta) for k, e in enumerate(rest, 1)],
                ledger.version + 1)  # the rest, applied newest first
    rebuilt = _snapshot(arm, tokenizer, max_length, prompts, targets)
    ledger.load([], ledger.version + 1)
    empty = _snapshot(arm, tokenizer, max_length, prompts, targets)
    ledger.load(active, ledger.version + 1)
    return {
        "active": len(active), "rolled_back": len(removed), "prompts": len(prompts),
        "answers_equal_rebuilt": after_rollback[0] == rebuilt[0],
        "logprobs_equal_rebuilt": after_rollback[1] == rebuilt[1],
        "all_rolled_back_answers_equal_pristine": empty[0] == pristine[0],
        "all_rolled_back_logprobs_equal_pristine": empty[1] == pristine[1],
        "restored_digest_equal": ledger.live_digest() == digest_before,
    }


def stream_table(result: StreamResult) -> str:
    head = ("| combination | active edits | reliability | paraphrase | alias (probes) "
            "| teacher-forced rel. | own edit fired | neighbour loc. | same-subject loc. "
            "| random loc. | probes counted (neighbour / same-subject / random) "
            "| probes excluded |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [head]
    for name, by_count in result.figures.items():
        for n, f in by_count.items():
            rows.append(
                f"| {name} | {n} | {f['reliability']:.3f} | {f['paraphrase']:.3f} | "
                f"{_fmt(f.get('alias'))} ({f.get('alias_probes', 0)}) | "
                f"{f['teacher_forced_reliability']:.3f} | {_fmt(f['routed_to_own_edit'])} | "
                f"{_fmt(f['neighbour_locality'])} | {_fmt(f['same_subject_locality'])} | "
                f"{_fmt(f['random_locality'])} | {f['neighbour_probes']} / "
                f"{f['same_subject_probes']} / {f['random_probes']} | "
                f"{f['locality_probes_excluded']} |")
    for n, by_tolerance in result.alone.items():
        for tolerance, a in by_tolerance.items():
            stored = "" if tolerance == "default" else f", stored at {tolerance}"
            rows.append(f"| each alone{stored} | {n} ({a['sampled']} sampled) | "
                        f"{a['reliability']:.3f} | {a['paraphrase']:.3f} | | | | | | | | |")
    table = "\n".join(rows)
    judged = {n: f["outcomes"] for n, f in result.figures.get("memory", {}).items()
              if "outcomes" in f}
    if judged:
        table += "\n\nJudged as the service does, edits made so far (one-shot / refined / " \
                 "fitted / did not hold): " + "; ".join(
                     f"{n}: {o.get('one_shot', 0)} / {o.get('refined', 0)} / "
                     f"{o.get('fitted', 0)} / {o.get('did_not_hold', 0)}"
                     for n, o in judged.items()) + "."
    if result.removal is not None:
        r = result.removal
        table += (f"\n\nRollback at {r['active']} edits: {r['rolled_back']} rolled back; "
                  f"answers equal a memory rebuilt from the rest: {r['answers_equal_rebuilt']}"
                  f" (log-probs {r['logprobs_equal_rebuilt']}); all rolled back equals the "
                  f"pristine model: answers {r['all_rolled_back_answers_equal_pristine']}, "
                  f"log-probs {r['all_rolled_back_logprobs_equal_pristine']} "
                  f"({r['prompts']} prompts).")
    return table


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
