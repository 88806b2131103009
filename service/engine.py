"""The edit engine: the editor computes, the store persists, the log applies.

Edits and rollbacks run one at a time per replica (an asyncio lock, which the log follower
also takes); model work runs in a worker thread so the event loop keeps answering. The
order inside an edit is what makes a failure lose nothing: the deltas are computed and
validated against the ledger first, then stored in one atomic Redis step (which assigns
their versions, globally across replicas, and appends them to the log), and only then
applied to the live weights — by following the log, exactly as every other replica applies
them. If anything before the store step fails, neither the store nor the weights changed;
once stored, an edit reaches every replica's weights, this one's included, through the log.

Before anything is stored, the edit memory judges each edit (``EditJudge``): it holds when
the live model with the edit would answer its prompt and rephrases greedily with exactly the
target; if the one-shot delta does not, it is refined within the budget. An edit that still
does not hold is refused (422 ``edit_did_not_hold``) unless its request accepts a partial
edit, and a refusal leaves the weights, the memory and the store as they were. The record
says which happened (``outcome``). Every edit is also measured on the spot: the target's
probability and teacher-forced accuracy on its prompt and rephrases before and after, and
whether the locality prompts' greedy answers stayed the same. The report (with the time
each phase took) is attached to the stored edit once it has been applied.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from editor_core.delta import EditDelta
from editor_core.editor import EditRequest, Editor
from editor_core.encoding import EditInputError
from editor_core.generation import GenerationError, SamplingParams, TokenStream
from editor_core.ledger import LedgerError, WeightLedger
from editor_core.probing import TargetScore, score_targets
from editor_core.refine import EditJudge, Judgement
from editor_core.routing import MemoryRouting

from .claims import claims
from .errors import ServiceError
from .follower import LogFollower
from .metrics import REFUSED, ServiceMetrics
from .schemas import (
    BeforeAfter,
    EarlierEdit,
    Edit,
    EditQuality,
    EditRecord,
    EditReport,
    LocalityCheck,
    RephraseQuality,
    Score,
)
from .settings import Limits, ServiceSettings, default
from .store import AddResult, EditStore, NewEdit, StoredEdit

# A locality prompt's answer: its greedy continuation up to the end of the line.
_LOCALITY_ANSWER = SamplingParams(max_new_tokens=16, stop=("\n",))


@dataclass(frozen=True)
class EditSpec:
    """One edit to make: what the editor gets (``request``) and what is stored (``record``,
    which also says what to measure)."""

    request: EditRequest
    record: EditRecord

    @property
    def rephrases(self) -> tuple[str, ...]:
        return tuple(self.record.rephrases)

    @property
    def locality_prompts(self) -> tuple[str, ...]:
        return tuple(self.record.locality_prompts)


@dataclass(frozen=True)
class _Earlier:
    """An active edit whose target is checked before and after a new edit."""

    id: str
    prompt: str
    target: str


@dataclass(frozen=True)
class _Measured:
    """Per spec: scores of the prompt then each rephrase, and the locality answers; and
    the scores of the earlier edits' targets."""

    scores: list[list[TargetScore]]
    answers: list[list[str]]
    earlier: list[TargetScore]


@dataclass(frozen=True)
class _Computed:
    """What an edit is once computed and judged, before anything is stored: the specs
    (widened with aliases), the deltas to store, the judgements (None: not judged), the
    earlier edits checked, and the "before" measurement."""

    specs: list[EditSpec]
    deltas: list[EditDelta]
    judged: list[Judgement] | None
    earlier: list[_Earlier]
    before: _Measured


@dataclass(frozen=True)
class Created:
    """What a create answers: the edits, and whether they replay an earlier request with
    the same Idempotency-Key (then nothing was computed or applied)."""

    edits: list[Edit]
    replayed: bool


def stored_record(record: EditRecord) -> dict[str, Any]:
    """What the store keeps of an edit's record: its JSON object, defaults left out."""
    return record.model_dump(mode="json", exclude_defaults=True)


def as_edit(stored: StoredEdit) -> Edit:
    """The API's edit: a stored edit's record and report, with its state."""
    return Edit.model_validate({
        **stored.record, **(stored.report or {}), "id": stored.id, "version": stored.version,
        "status": stored.status, "rolled_back_by": stored.rolled_back_by,
        "rolled_back_at": stored.rolled_back_at,
        "rolled_back_version": stored.rolled_back_version,
        "superseded_by": stored.superseded_by})


def _idempotency_key_reused() -> ServiceError:
    return ServiceError(409, "idempotency_key_reused",
                        "this Idempotency-Key was used for a different request")


class EditEngine:
    """One live model's edits: create, roll back, and rebuild from the store at startup."""

    def __init__(self, editor: Editor, ledger: WeightLedger, store: EditStore,
                 metrics: ServiceMetrics,
                 max_queued_edits: int = default(Limits, "max_queued_edits"),
                 snapshot_every: int = default(ServiceSettings, "snapshot_every"),
                 judge: EditJudge | None = None, routing: MemoryRouting | None = None) -> None:
        self.editor = editor
        self.judge = judge  # None: edits are not judged (merged combinations)
        self.routing = routing  # the edit memory's routing of the live model, if any
        self.ledger = ledger
        self.store = store
        self.metrics = metrics
        self.max_queued_edits = max_queued_edits
        self.follower = LogFollower(ledger, store, metrics, snapshot_every)
        self._lock = asyncio.Lock()
        self._queued = 0

    @contextmanager
    def _timed(self, timings: dict[str, float], phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            timings[phase] = round(timings.get(phase, 0.0) + seconds * 1000, 3)
            self.metrics.edit_seconds.labels(phase).observe(seconds)

    async def _turn(self) -> asyncio.Lock:
        """Wait for the edit lock, refusing (429) when too many changes already wait."""
        if self._queued >= self.max_queued_edits:
            raise ServiceError(429, "busy", f"{self._queued} edits or rollbacks are already "
                               "waiting; retry shortly", {"queued": self._queued})
        self._queued += 1
        start = time.perf_counter()
        try:
            await self._lock.acquire()
        finally:
            self._queued -= 1
        self.metrics.lock_wait_seconds.observe(time.perf_counter() - start)
        return self._lock

    async def replay(self) -> int:
        """Bring the live weights up to the store's log; returns how many edits are active."""
        async with self._lock:
            return await self.follower.start()

    async def follow(self) -> None:
        """Apply what other replicas write to the log, as it comes (runs until cancelled)."""
        await self.follower.run(self._lock)

    async def create(self, specs: list[EditSpec], *, idempotency_key: str | None = None,
                     request_hash: str = "") -> Created:
        """Compute, store and apply edits (one editor pass, all or none).

        An idempotency key seen before returns what it created, computing and applying
        nothing; reused with a different request it is refused (409). The phases, each
        below: ``_begin`` (the key and the log: one store round trip), ``_compute_and_judge``
        (nothing stored yet: a refusal changes nothing), ``_persist`` (one round trip: the
        edits, the log and the version), ``_apply`` (through the log, which ``_persist``
        brought back) and ``_answer`` (the report: one round trip). Three in all.
        """
        lock = await self._turn()
        try:
            replay = await self._begin(idempotency_key, request_hash)
            if replay is not None:
                return replay
            timings: dict[str, float] = {}
            computed = await self._compute_and_judge(specs, timings)
            result = await self._persist(computed, idempotency_key, request_hash, timings)
            if not result.created:  # another replica stored this Idempotency-Key meanwhile
                if result.request_hash != request_hash:
                    raise _idempotency_key_reused()
                # its edits, already applied by the follower; nothing new
                return Created([as_edit(e) for e in result.edits], replayed=True)
            await self._apply(computed, result, timings)
            return await self._answer(computed, result, timings)
        finally:
            lock.release()

    async def _begin(self, idempotency_key: str | None, request_hash: str) -> Created | None:
        """What the Idempotency-Key made, if it was seen (409 when for another request);
        else the live weights brought up to the log, so that the edit is computed (and
        measured) on the newest ones. Both are read in one round trip."""
        read, seen = await self.store.read_log(self.follower.position,
                                               idempotency_key=idempotency_key)
        if seen is not None:
            if seen.request_hash != request_hash:
                raise _idempotency_key_reused()
            return Created([as_edit(e) for e in await self.store.get_many(seen.ids)],
                           replayed=True)
        await self.follower.sync(read=read)
        return None

    async def _compute_and_judge(self, specs: list[EditSpec], timings: dict[str, float]
                                 ) -> _Computed:
        """Widen with aliases, compute the deltas (measuring "before" beside), and judge
        them: 422 ``invalid_edit`` or ``edit_did_not_hold`` with nothing stored."""
        if self.editor.alias_finder is not None:
            with self._timed(timings, "aliases"):
                specs = await asyncio.to_thread(self._with_aliases, specs)
        earlier = await self._newest_active(max(s.record.check_earlier for s in specs))
        try:  # nothing is stored or applied yet: a refusal changes nothing
            with self._timed(timings, "compute"):  # measuring "before" runs beside
                deltas, before = await asyncio.gather(
                    asyncio.to_thread(self._compute, specs),
                    asyncio.to_thread(self._measure, specs, earlier),
                    return_exceptions=True)  # both finish before the lock is let go
            for outcome in (deltas, before):
                if isinstance(outcome, BaseException):
                    raise outcome
        except (EditInputError, GenerationError, LedgerError, FloatingPointError) as exc:
            for spec in specs:
                self.metrics.edits.labels(spec.request.task, "rejected").inc()
            raise ServiceError(422, "invalid_edit", str(exc)) from exc
        judged = None
        if self.judge is not None:
            with self._timed(timings, "judge"):
                judged = await asyncio.to_thread(self._judge, specs, deltas)
            self._refuse_what_did_not_hold(specs, judged, before)
            deltas = [j.delta for j in judged]
        return _Computed(specs, deltas, judged, earlier, before)

    async def _persist(self, computed: _Computed, idempotency_key: str | None,
                       request_hash: str, timings: dict[str, float]) -> AddResult:
        """Store the edits with what the judge found (one round trip), which also answers
        their stored state and, unless another replica wrote meanwhile, the log since the
        live weights' position."""
        records = [s.record if j is None else s.record.model_copy(update=_outcome(j))
                   for s, j in zip(computed.specs,
                                   computed.judged or [None] * len(computed.specs))]
        with self._timed(timings, "persist"):
            return await self.store.add(
                [NewEdit(stored_record(r), d.to_bytes(), claims(r))
                 for r, d in zip(records, computed.deltas)],
                idempotency_key=idempotency_key, request_hash=request_hash,
                by=records[0].created_by, at=records[0].created_at,
                log_after=self.follower.position)

    async def _apply(self, computed: _Computed, result: AddResult,
                     timings: dict[str, float]) -> None:
        """Apply the stored edits to the live weights by following the log, as every
        replica does (with the log ``_persist`` brought back, no round trip)."""
        with self._timed(timings, "apply"):
            await self.follower.sync({e.id: d for e, d in zip(result.edits, computed.deltas)},
                                     read=result.log)
        self.metrics.rollbacks.inc(sum(len(v) for v in result.superseded.values()))

    async def _answer(self, computed: _Computed, result: AddResult,
                      timings: dict[str, float]) -> Created:
        """Measure "after", attach each edit's report (one round trip) and answer the
        stored edits with it, without reading them back."""
        specs, judged, earlier = computed.specs, computed.judged, computed.earlier
        with self._timed(timings, "measure"):
            # One edit that replaced nothing: its trial routed exactly as the memory now
            # does, so its prompt and rephrase scores are already known.
            known = ([list(judged[0].scores)] if judged is not None and len(specs) == 1
                     and not any(result.superseded.values()) else None)
            after = await asyncio.to_thread(self._measure, specs, earlier, known)
        reports = {
            edit.id: EditReport(timings_ms=dict(timings), batch_size=len(specs),
                                quality=_quality(spec, computed.before, after, i, earlier),
                                superseded=result.superseded.get(edit.id, [])
                                ).model_dump(mode="json")
            for i, (spec, edit) in enumerate(zip(specs, result.edits))}
        await self.store.annotate(reports)
        for i, spec in enumerate(specs):
            self.metrics.post_edit_probability.labels(spec.request.task).observe(
                after.scores[i][0].probability)
            self.metrics.edits.labels(spec.request.task, "applied").inc()
            if judged is not None:
                self.metrics.edit_outcomes.labels(spec.request.task, judged[i].outcome).inc()
        return Created([as_edit(replace(e, report=reports[e.id])) for e in result.edits],
                       replayed=False)

    def _with_aliases(self, specs: list[EditSpec]) -> list[EditSpec]:
        """Each edit widened with the names the model knows for its subject (recorded)."""
        out = []
        for spec in specs:
            request = self.editor.alias_finder.widen(spec.request)
            found = request.aliases[len(spec.request.aliases):]
            out.append(spec if not found else EditSpec(request, spec.record.model_copy(
                update={"derived_aliases": list(found),
                        "derived_rephrases": list(request.derived)})))
        return out

    def _compute(self, specs: list[EditSpec]) -> list[EditDelta]:
        batch = self.editor.compute([s.request for s in specs])
        deltas = [delta.compressed() for delta in batch.split()]
        for delta in deltas:
            self.ledger.validate(delta)
        return deltas

    def _judge(self, specs: list[EditSpec], deltas: list[EditDelta]) -> list[Judgement]:
        """Each edit on its own against the live memory, refined where it does not hold."""
        return [self.judge.judge(s.request, d, s.locality_prompts)
                for s, d in zip(specs, deltas)]

    def _refuse_what_did_not_hold(self, specs: list[EditSpec], judged: list[Judgement],
                                  before: _Measured) -> None:
        """422 ``edit_did_not_hold`` (the whole batch: all or none is stored) when an edit
        that does not accept a partial result did not hold; nothing was stored yet."""
        failed = [i for i, (s, j) in enumerate(zip(specs, judged))
                  if not j.holds and not s.record.accept_partial]
        if not failed:
            return
        for s, j in zip(specs, judged):
            self.metrics.edits.labels(s.request.task, "refused").inc()
            self.metrics.edit_outcomes.labels(
                s.request.task, REFUSED if not j.holds else j.outcome).inc()
        details = [{"index": i, "prompt": specs[i].request.prompt,
                    "target": specs[i].request.target, "refine_steps": judged[i].steps,
                    "refine_ms": round(judged[i].ms, 1),
                    "refine_time_capped": judged[i].time_capped,
                    "prompts": [{"prompt": p, "before": _score(b).model_dump(),
                                 "after": _score(a).model_dump()}
                                for p, b, a in zip((specs[i].request.prompt,
                                                    *specs[i].rephrases),
                                                   before.scores[i], judged[i].scores)]}
                   for i in failed]
        which = ", ".join(str(i) for i in failed)
        raise ServiceError(
            422, "edit_did_not_hold",
            f"edit {which} of the request did not hold: the model would not answer its "
            f"target greedily after {max(judged[i].steps for i in failed)} refinement steps. "
            "Nothing was stored; send accept_partial to keep such an edit anyway",
            {"edits": details})

    async def _newest_active(self, n: int) -> list[_Earlier]:
        """The ``n`` most recently applied active edits, newest first."""
        if n <= 0:
            return []
        newest = [edit_id for edit_id, _ in reversed(await self.store.active())][:n]
        records = await self.store.get_many(newest)
        return [_Earlier(i, r.record["prompt"], r.record["target"])
                for i, r in zip(newest, records)]

    def _measure(self, specs: list[EditSpec], earlier: list[_Earlier],
                 known: list[list[TargetScore]] | None = None) -> _Measured:
        """Score each spec's target on its prompt and rephrases (unless ``known``), and the
        earlier edits' targets; each spec's locality answers."""
        model, tokenizer = self.editor.model, self.editor.tokenizer
        prompts, targets = [], []
        if known is None:
            prompts = [p for s in specs for p in (s.request.prompt, *s.rephrases)]
            targets = [s.request.target for s in specs for _ in range(1 + len(s.rephrases))]
        asked = prompts + [e.prompt for e in earlier]
        flat = score_targets(model, tokenizer, asked, targets + [e.target for e in earlier],
                             self.editor.max_length) if asked else []
        flat, earlier_scores = flat[:len(prompts)], flat[len(prompts):]
        if known is not None:
            flat = [score for scores in known for score in scores]
        answers = [TokenStream(model, tokenizer, p, _LOCALITY_ANSWER, self.routing).run().strip()
                   for s in specs for p in s.locality_prompts]
        scores, found = [], []
        for s in specs:
            n = 1 + len(s.rephrases)
            scores.append(flat[:n])
            flat = flat[n:]
            found.append(answers[:len(s.locality_prompts)])
            answers = answers[len(s.locality_prompts):]
        return _Measured(scores, found, earlier_scores)

    async def rollback(self, edit_id: str, *, by: str, at: str) -> Edit:
        """Take one edit out of the store's active set and out of the live weights."""
        lock = await self._turn()
        try:
            edit = await self.store.rollback(edit_id, by=by, at=at)
            await self.follower.sync()
            self.metrics.rollbacks.inc()
            return as_edit(edit)
        finally:
            lock.release()

    async def rollback_after(self, version: int, *, by: str, at: str) -> list[Edit]:
        """Roll back every active edit newer than ``version``, newest first."""
        lock = await self._turn()
        try:
            ids = await self.store.rollback_after(version, by=by, at=at)
            await self.follower.sync()
            self.metrics.rollbacks.inc(len(ids))
            return [as_edit(e) for e in await self.store.get_many(ids)]
        finally:
            lock.release()


def _outcome(judged: Judgement) -> dict[str, Any]:
    """What the stored record says of the judgement."""
    return {"outcome": judged.outcome, "refine_steps": judged.steps,
            "refine_ms": round(judged.ms, 1), "refine_time_capped": judged.time_capped}


def _score(score: TargetScore) -> Score:
    return Score(probability=score.probability, logprob=score.logprob,
                 token_accuracy=score.token_accuracy)


def _quality(spec: EditSpec, before: _Measured, after: _Measured, i: int,
             earlier: list[_Earlier]) -> EditQuality:
    """The measured quality of spec ``i``: before/after on prompt, rephrases, locality, and
    on the targets of the earlier edits it asked about."""
    b, a = before.scores[i], after.scores[i]
    locality = [LocalityCheck(prompt=p, before=x, after=y, unchanged=x == y)
                for p, x, y in zip(spec.locality_prompts, before.answers[i], after.answers[i])]
    return EditQuality(
        prompt=BeforeAfter(before=_score(b[0]), after=_score(a[0])),
        rephrases=[RephraseQuality(prompt=p, before=_score(x), after=_score(y))
                   for p, x, y in zip(spec.rephrases, b[1:], a[1:])],
        locality=locality,
        locality_unchanged=all(x.unchanged for x in locality) if locality else None,
        earlier_edits=[EarlierEdit(id=e.id, prompt=e.prompt, target=e.target,
                                   before=_score(x), after=_score(y))
                       for e, x, y in list(zip(earlier, before.earlier,
                                               after.earlier))[:spec.record.check_earlier]])
