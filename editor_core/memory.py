"""The edit memory: edits kept unmerged, each routed to the sequences it is about.

Merging thousands of independently computed deltas into the same few weights makes them
interfere (``bench/stream-heldout.md``: the merged sum and ridge fade as edits accumulate).
The memory keeps the live weights pristine and every active edit as an
**entry**: its stored low-rank factors and its **routing key** — the input of the gate
module (the first edited weight) at the last token of the edit's plain prompt (and of each
rephrase the request gave), computed on the pristine model when the edit is made — plus
the token ids of its subject (and the subject's aliases).

Per sequence, routing follows three rules:

- an entry becomes *eligible* once one of its subject's token sequences has appeared in the
  sequence (an entry without a subject is eligible everywhere, behind a stricter threshold);
- at each position, the gate input (centred on the base model's background mean) is
  compared by cosine with the keys of the eligible entries; the first position where one
  reaches the threshold *fires* the best-matching entry there, and a later position whose
  best match beats every cosine the acting entry reached hands over to that entry (one
  entry acts at each position: an early, loose match of another edit of the same subject
  gives way to the prompt's own key);
- the acting entry's ΔW acts at its positions, in prefill and decode, through low-rank
  products ``out −= step · (x uᵀ) d`` — never a dense matrix.

The gate module's input is computed before any edited weight acts, so routing never
depends on the edits themselves. The memory is a function of the active set alone: ties
break by edit id, never by arrival order, so removing an entry gives exactly the answers of
a memory built without it, and an empty memory is the pristine model.

The memory plugs into the ``WeightLedger`` as its combination (``total`` is always None: no
weight is rewritten). A change is published under the ledger's write lock, and each routing
session reads the index it started with, so a generation sees one state of the memory.
Routing sessions are per thread: ``routing_session(model)`` opens one for a decoding loop
(its state survives across steps of a KV cache); a forward pass outside any session routes
on its own (teacher-forced scoring of whole sequences).
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from .delta import ActiveEdit, EditDelta, RoutingKey
from .specs import EditableWeight

__all__ = ["EditMemory", "MemoryEntry", "RoutingConfig", "RoutingSession", "key_space",
           "routing_session"]


@dataclass(frozen=True)
class RoutingConfig:
    """How the memory routes: the gate module, the thresholds, the key space.

    ``threshold`` applies to entries with a subject; ``subjectless_threshold`` to entries
    without one (they are eligible everywhere, so they must match more closely). ``mean``
    is the average gate input over background text, subtracted before the cosine (raw
    activations are anisotropic). ``projection`` ([d, d]) maps centred gate inputs into a
    key space learned so that rephrasings of one question lie close and other questions
    about the same subject lie apart; without it the cosine is taken on the centred inputs.
    Calibrated per base model, saved with the editor.
    """

    gate: str
    threshold: float = 0.8
    subjectless_threshold: float = 0.95
    mean: torch.Tensor | None = None
    projection: torch.Tensor | None = None

    def key_space(self, x: torch.Tensor) -> torch.Tensor:
        """Gate inputs ([..., d]) as unit vectors of the key space the cosines are taken in."""
        return key_space(x, self.mean, self.projection)


def key_space(x: torch.Tensor, mean: torch.Tensor | None,
              projection: torch.Tensor | None) -> torch.Tensor:
    """Gate inputs ([..., d]), centred on ``mean`` and mapped by ``projection`` ([d, d]),
    as unit vectors: the space routing cosines are taken in."""
    x = x.float()
    if mean is not None:
        x = x - mean
    if projection is not None:
        x = x @ projection
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


@dataclass(frozen=True)
class MemoryEntry:
    """One active edit as the memory uses it."""

    edit_id: str
    keys: torch.Tensor  # [k, d] in the key space (RoutingConfig.key_space), unit-norm
    subjects: tuple[tuple[int, ...], ...]  # token-id sequences; empty: no subject
    factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]]  # module → (u, d, step)
    answers: tuple[tuple[int, ...], ...] = ()  # accepted answers' token ids (RoutingKey)
    ends: tuple[int, ...] = ()  # tokens that end its line
    contrast: torch.Tensor | None = None  # [c, d] key space: other questions of its subject


@dataclass(frozen=True)
class _Index:
    """An immutable view of the memory that one routing session reads."""

    entries: dict[str, MemoryEntry]
    by_last_token: dict[int, tuple[tuple[str, tuple[int, ...]], ...]]
    subjectless: tuple[str, ...]
    subjectless_keys: torch.Tensor | None  # [n, d] stacked keys of subjectless entries
    subjectless_owner: tuple[str, ...]  # entry id of each stacked key row

    def with_entries(self, extra: Sequence[MemoryEntry]) -> _Index:
        """This index with ``extra`` entries beside (a trial: nothing is published)."""
        entries, by_last = dict(self.entries), dict(self.by_last_token)
        subjectless = list(self.subjectless)
        keys = [] if self.subjectless_keys is None else [self.subjectless_keys]
        owner = list(self.subjectless_owner)
        for entry in extra:
            entries[entry.edit_id] = entry
            for ids in entry.subjects:
                by_last[ids[-1]] = (*by_last.get(ids[-1], ()), (entry.edit_id, ids))
            if not entry.subjects:
                subjectless.append(entry.edit_id)
                keys.append(entry.keys)
                owner += [entry.edit_id] * entry.keys.shape[0]
        return _Index(entries, by_last, tuple(subjectless), torch.cat(keys) if keys else None,
                      tuple(owner))


_EMPTY = _Index({}, {}, (), None, ())
_ATTACHED: weakref.WeakKeyDictionary[nn.Module, EditMemory] = weakref.WeakKeyDictionary()
_LOCAL = threading.local()


class EditMemory:
    """The active edits as routed entries (a ``DeltaCombiner`` that never rewrites weights)."""

    snapshots = False  # rebuilt from the stored edits alone, nothing to save

    def __init__(self, editable: list[EditableWeight], config: RoutingConfig) -> None:
        self.editable = list(editable)
        self.config = config
        self._modules = {w.name: w.module_name for w in self.editable}
        self._entries: dict[str, MemoryEntry] = {}
        # kept in step with the entries, so publishing copies references, never rebuilds
        self._by_last: dict[int, tuple[tuple[str, tuple[int, ...]], ...]] = {}
        self._subjectless: dict[str, torch.Tensor] = {}
        self._index = _EMPTY

    # -- the combiner protocol (the ledger calls these under its change lock) -------------
    def add(self, edit: ActiveEdit) -> None:
        self._insert(self.entry(edit.edit_id, edit.delta))

    def remove(self, edit: ActiveEdit) -> None:
        self._drop(edit.edit_id)

    def _drop(self, edit_id: str) -> None:
        entry = self._entries.pop(edit_id)
        self._subjectless.pop(entry.edit_id, None)
        for last in {ids[-1] for ids in entry.subjects}:  # several names may end alike
            kept = tuple(c for c in self._by_last[last] if c[0] != entry.edit_id)
            if kept:
                self._by_last[last] = kept
            else:
                del self._by_last[last]

    def _insert(self, entry: MemoryEntry) -> None:
        if entry.edit_id in self._entries:
            self._drop(entry.edit_id)
        self._entries[entry.edit_id] = entry
        if not entry.subjects:
            self._subjectless[entry.edit_id] = entry.keys
        for ids in entry.subjects:  # tuples are replaced, never changed: snapshots stay
            self._by_last[ids[-1]] = (*self._by_last.get(ids[-1], ()), (entry.edit_id, ids))

    def settle(self, version: int) -> None:
        """Nothing to solve: the memory is its set of entries."""

    def exact_version(self, version: int) -> int:
        return version  # every state is a function of the active set

    def exact_state(self) -> dict[str, torch.Tensor]:
        return {}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError("the edit memory is rebuilt from its active edits")

    def recompute(self, active: list[ActiveEdit]) -> None:
        self._entries, self._by_last, self._subjectless = {}, {}, {}
        for e in active:
            self._insert(self.entry(e.edit_id, e.delta))

    def total(self, name: str) -> torch.Tensor | None:
        return None  # the weights stay pristine

    def publish(self) -> None:
        """Make the current entries the ones new routing sessions read (the ledger calls
        this under its write lock, with the version). Costs a copy of references: cheap at
        100,000 entries."""
        subjectless = tuple(sorted(self._subjectless))
        keys = [self._subjectless[i] for i in subjectless]
        owner = tuple(i for i in subjectless for _ in range(self._subjectless[i].shape[0]))
        self._index = _Index(dict(self._entries), dict(self._by_last), subjectless,
                             torch.cat(keys) if keys else None, owner)

    def state_digest(self) -> str:
        """Names the active set ('' when empty): part of the ledger's live digest."""
        if not self._entries:
            return ""
        return hashlib.sha256("\n".join(sorted(self._entries)).encode()).hexdigest()

    # -- entries --------------------------------------------------------------------------
    def validate(self, delta: EditDelta) -> None:
        """Refuse a delta the memory cannot route (ValueError)."""
        if delta.routing is None:
            raise ValueError("the edit memory needs the edit's routing key; compute the edit "
                             "with an editor whose combination is 'memory'")
        keys = delta.routing.keys
        d = self.config.mean.shape[0] if self.config.mean is not None else keys.shape[-1]
        if keys.dim() != 2 or keys.shape[0] == 0 or keys.shape[1] != d or not torch.isfinite(
                keys).all():
            raise ValueError(f"routing keys are {tuple(keys.shape)}; expected finite (k, {d})")

    def entry(self, edit_id: str, delta: EditDelta) -> MemoryEntry:
        self.validate(delta)
        keys = self.config.key_space(delta.routing.keys)
        # the stored tensors themselves (shared with the ledger's copy, in the stored dtype)
        factors = {self._modules[name]: (f.u, f.d, float(f.step))
                   for name, f in delta.factors.items()}
        routing = delta.routing
        contrast = None if routing.contrast is None else self.config.key_space(
            routing.contrast).contiguous()
        return MemoryEntry(edit_id, keys.contiguous(), routing.subjects, factors,
                           routing.answers, routing.ends, contrast)

    def __len__(self) -> int:
        return len(self._index.entries)

    # -- routing --------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        """Route ``model``'s forward passes through this memory (hooks stay for its life)."""
        modules = dict(model.named_modules())
        order = [n for n, _ in model.named_modules() if n in set(self._modules.values())]
        if order[0] != self.config.gate:
            raise ValueError(f"the gate {self.config.gate!r} must be the first edited module "
                             f"({order[0]!r}), so routing never sees an edit's effect")
        base = getattr(model, "base_model", model)
        base.register_forward_pre_hook(self._on_inputs, with_kwargs=True)
        base.register_forward_hook(self._on_done)
        modules[self.config.gate].register_forward_pre_hook(self._on_gate)
        for module_name in self._modules.values():
            modules[module_name].register_forward_hook(self._make_apply(module_name))
        _ATTACHED[model] = self

    def _current(self) -> _Index:
        """The index this thread routes on: a trial's, else the published one."""
        trial = getattr(_LOCAL, "trial", None)
        return trial[1] if trial is not None and trial[0] is self else self._index

    @contextmanager
    def trial(self, entries: Sequence[MemoryEntry]) -> Iterator[None]:
        """Route this thread's forward passes as if ``entries`` were active too, publishing
        nothing: how an edit is judged on the live memory before it is stored."""
        previous = getattr(_LOCAL, "trial", None)
        _LOCAL.trial = (self, self._index.with_entries(entries))
        try:
            yield
        finally:
            _LOCAL.trial = previous

    @contextmanager
    def pristine(self) -> Iterator[None]:
        """Route this thread's forward passes on no entries at all: the pristine model's
        answers, while every other thread keeps routing on the published memory (the
        weights themselves are never rewritten, so nothing needs pausing)."""
        previous = getattr(_LOCAL, "trial", None)
        _LOCAL.trial = (self, _EMPTY)
        try:
            yield
        finally:
            _LOCAL.trial = previous

    @contextmanager
    def session(self) -> Iterator[RoutingSession]:
        """A routing state for one decoding loop in this thread (rows = batch rows)."""
        previous = getattr(_LOCAL, "session", None)
        session = RoutingSession(self, self._current())
        _LOCAL.session = session
        try:
            yield session
        finally:
            _LOCAL.session = previous

    def _on_inputs(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        session = getattr(_LOCAL, "session", None)
        index = self._current()
        if ids is None or (session is None and not index.entries):
            return None
        if session is None or session.ephemeral or session.memory is not self:
            session = RoutingSession(self, index, ephemeral=True)
            _LOCAL.session = session
        mask = kwargs.get("attention_mask")
        session.feed(ids, None if mask is None else mask[:, -ids.shape[1]:])
        return None

    def _on_done(self, module, args, output):
        session = getattr(_LOCAL, "session", None)
        if session is not None and session.ephemeral:
            _LOCAL.session = None
        return None

    def _on_gate(self, module, args):
        session = getattr(_LOCAL, "session", None)
        if session is not None and session.memory is self:
            session.route(args[0])
        return None

    def _make_apply(self, module_name: str):
        def hook(module, args, output):
            session = getattr(_LOCAL, "session", None)
            if session is None or session.memory is not self or not session.applying:
                return None
            x = args[0]
            out = output.clone()
            for row, entry, start, stop in session.applying:
                u, d, step = entry.factors[module_name]
                xs = x[row, start:stop]
                change = (xs @ u.to(xs).T) @ d.to(xs)  # the factors live on the CPU
                out[row, start:stop] -= (step * change).to(out.dtype)
            return out
        return hook


@dataclass
class _Row:
    ids: list[int] = field(default_factory=list)
    eligible: dict[str, int] = field(default_factory=dict)  # entry → first position
    fired: MemoryEntry | None = None  # the entry acting now
    since: int = -1  # the position it fired at: its answer is written after it
    score: float = -2.0  # its best cosine so far
    acted: list[str] = field(default_factory=list)  # every entry that acted, in order
    # entries that left their answer → (their best cosine then, their line ends)
    barred: dict[str, tuple[float, tuple[int, ...]]] = field(default_factory=dict)


class RoutingSession:
    """Which entry fired for each row of one decoding loop, step after step."""

    def __init__(self, memory: EditMemory, index: _Index, ephemeral: bool = False) -> None:
        self.memory = memory
        self.index = index
        self.ephemeral = ephemeral
        self.rows: list[_Row] = []
        self.applying: list[tuple[int, MemoryEntry, int, int]] = []  # row, entry, span
        self._chunk: list[list[int]] = []  # per row: real positions of the chunk's tokens

    def fired(self, row: int) -> tuple[str, ...]:
        """The ids of the edits that acted on ``row``, in order (one at each position)."""
        return tuple(self.rows[row].acted) if row < len(self.rows) else ()

    def select(self, rows: Sequence[int]) -> None:
        """Keep only these rows (a batch whose finished sequences left)."""
        self.rows = [self.rows[r] for r in rows]

    def feed(self, ids: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Take the next chunk of token ids (``[B, T]``; mask 0 marks padding)."""
        while len(self.rows) < ids.shape[0]:
            self.rows.append(_Row())
        by_last = self.index.by_last_token
        ids_list = ids.tolist()
        keep = None if mask is None else mask.tolist()
        self._chunk = []
        for r, tokens in enumerate(ids_list):
            row, positions = self.rows[r], []
            for j, token in enumerate(tokens):
                if keep is not None and not keep[r][j]:
                    positions.append(-1)
                    continue
                row.ids.append(token)
                pos = len(row.ids) - 1
                positions.append(pos)
                for edit_id, subject in by_last.get(token, ()):
                    n = len(subject)
                    if edit_id not in row.eligible and tuple(row.ids[-n:]) == subject:
                        row.eligible[edit_id] = pos
            self._chunk.append(positions)

    def route(self, x: torch.Tensor) -> None:
        """Fire entries at the chunk's gate inputs ``x`` ([B, T, d]); set what applies
        where: the entry acting before the chunk, then each one that takes over in it,
        until its answer is written or leaves its target."""
        config, index = self.memory.config, self.index
        self.applying = []
        if not index.entries:
            return
        for r, positions in enumerate(self._chunk):
            row = self.rows[r]
            real = [j for j, p in enumerate(positions) if p >= 0]
            if not real:
                continue
            acting, start = row.fired, real[0]
            if not (row.eligible or index.subjectless or acting is not None):
                continue
            for j, entry in self._walk(row, x[r], real, positions, config, index):
                if acting is not None and j > start:
                    self.applying.append((r, acting, start, j))
                acting, start = entry, j
            if acting is not None:
                self.applying.append((r, acting, start, len(positions)))

    @staticmethod
    def _walk(row: _Row, x: torch.Tensor, real: list[int], positions: list[int],
              config: RoutingConfig, index: _Index) -> list[tuple[int, MemoryEntry | None]]:
        """Walk the chunk's positions in order. The acting entry stops (None) at the first
        token that leaves its answer; the best eligible entry at or above its threshold
        fires where none acts, and takes over from the acting one when its cosine beats
        every cosine the acting one reached. An entry that left its answer fires again
        before its line ends only where it matches better than it had. Returns the changes
        (chunk index, entry or None). Causal: a position's choice depends on positions up to
        it only."""
        contest = _Contest.of(row, x, real, [positions[j] for j in real], config, index) if (
            row.eligible or index.subjectless) else None
        changes: list[tuple[int, MemoryEntry | None]] = []
        for t, j in enumerate(real):
            pos = positions[j]
            token = row.ids[pos]
            if row.barred and any(token in ends for _, ends in row.barred.values()):
                row.barred = {}
            acting = row.fired
            if acting is not None and pos > row.since:
                state = _answer_state(acting, row.ids[row.since + 1:pos + 1])
                if state != "writing":
                    if state == "left":  # on this line it fires again only on a closer match
                        row.barred[acting.edit_id] = (row.score, acting.ends)
                    row.fired, row.score = None, -2.0
                    changes.append((j, None))
            if contest is None or not contest.ok[t]:
                continue
            found = contest.best(t, row.barred)
            if found is None:
                continue
            score, owner = found
            if row.fired is not None and owner == row.fired.edit_id:
                row.score = max(row.score, score)
            elif row.fired is None or score > row.score:
                row.fired, row.score, row.since = index.entries[owner], score, pos
                row.acted.append(owner)
                changes.append((j, row.fired))
        return changes


@dataclass(frozen=True)
class _Contest:
    """The cosines of one row's chunk positions with every key that may fire there."""

    owners: list[str]
    scores: list[list[float]]  # [T', keys]; -2 where a key may not fire
    ok: list[bool]  # per position: some key may fire

    @classmethod
    def of(cls, row: _Row, x: torch.Tensor, real: list[int], at: list[int],
           config: RoutingConfig, index: _Index) -> _Contest:
        h = config.key_space(x[real].cpu())  # keys, mean and map live on the CPU
        owners: list[str] = []
        blocks: list[torch.Tensor] = []
        starts: list[int] = []
        limits: list[float] = []
        floors: list[torch.Tensor] = []  # per key column: the closest contrast key, [T']
        none = torch.full((len(real),), -2.0)
        for edit_id, first in sorted(row.eligible.items()):
            entry = index.entries[edit_id]
            k = entry.keys.shape[0]
            owners += [edit_id] * k
            blocks.append(entry.keys)
            starts += [first] * k
            limits += [config.threshold] * k
            floor = none if entry.contrast is None else (h @ entry.contrast.T).max(1).values
            floors += [floor] * k
        if index.subjectless_keys is not None:
            owners += list(index.subjectless_owner)
            blocks.append(index.subjectless_keys)
            starts += [0] * len(index.subjectless_owner)
            limits += [config.subjectless_threshold] * len(index.subjectless_owner)
            floors += [none] * len(index.subjectless_owner)
        sims = h @ torch.cat(blocks).T  # [T', keys]
        pos = torch.tensor(at).unsqueeze(1)
        ok = ((sims >= torch.tensor(limits)) & (pos >= torch.tensor(starts))
              & (sims > torch.stack(floors, 1)))
        # to 1e-5: a key computed in a padded batch differs from the same prompt's key
        # computed alone in the last bits, and such near-ties must break by edit id
        scores = torch.where(ok, sims, torch.tensor(-2.0)).mul(1e5).round().div(1e5).tolist()
        return cls(owners, scores, ok.any(1).tolist())

    def best(self, t: int, barred: dict[str, tuple[float, tuple[int, ...]]]
             ) -> tuple[float, str] | None:
        """The best key that may fire at chunk position ``t`` (ties: the smaller id)."""
        scores = self.scores[t]
        candidates = [k for k in range(len(self.owners)) if scores[k] > -2.0 and (
            self.owners[k] not in barred or scores[k] > barred[self.owners[k]][0])]
        if not candidates:
            return None
        k = max(candidates, key=lambda k: (self.scores[t][k], _neg(self.owners[k])))
        return self.scores[t][k], self.owners[k]


def _answer_state(entry: MemoryEntry, answer: list[int]) -> str:
    """Where ``answer`` (the tokens since the entry fired, the newest last) stands:
    ``writing`` one of its accepted answers, ``done`` (the newest token ends the line or
    follows a whole answer), or ``left`` them. The line-end token itself is not acted on:
    what follows it is the model's own. An opinion edit writes until its line ends; an edit
    with neither answers nor line ends (stored before they existed) always acts."""
    if answer[-1] in entry.ends:
        return "done"
    if entry.answers:
        n = len(answer)
        if any(len(path) >= n and list(path[:n]) == answer for path in entry.answers):
            return "writing"
        return "done" if tuple(answer[:-1]) in entry.answers else "left"
    return "writing"


def _neg(edit_id: str) -> tuple[int, ...]:
    """Sort key: on equal scores the smaller id wins (any deterministic order would do)."""
    return tuple(-ord(c) for c in edit_id)


def routing_session(model: nn.Module):
    """The memory's routing session for a decoding loop on ``model`` (a null context when
    no memory is attached: then it yields None)."""
    memory = _ATTACHED.get(model)
    return nullcontext() if memory is None else memory.session()


def routing_keys(model: nn.Module, tokenizer, gate: str, prompts: Sequence[str]
                 ) -> torch.Tensor:
    """The gate module's input at each prompt's last token ([len(prompts), d]), in one
    right-padded pass; the caller passes a model no memory routes (the pristine copy)."""
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    width = max(len(e) for e in encoded)
    pad = tokenizer.pad_token_id or 0
    device = next(model.parameters()).device
    ids = torch.tensor([e + [pad] * (width - len(e)) for e in encoded], device=device)
    mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in encoded],
                        device=device)
    module = dict(model.named_modules())[gate]
    found: list[torch.Tensor] = []
    owner = threading.get_ident()  # the editing pass may run beside, in another thread

    def hook(m, args):
        if threading.get_ident() == owner:
            found.append(args[0].detach())
            raise _GateReached  # the layers above the gate are not needed

    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            getattr(model, "base_model", model)(input_ids=ids, attention_mask=mask,
                                                use_cache=False)
    except _GateReached:
        pass
    finally:
        handle.remove()
    last = torch.tensor([len(e) - 1 for e in encoded], device=device)
    return found[0][torch.arange(len(encoded), device=device), last].float().cpu()


class _GateReached(Exception):
    """Ends a keys-only forward pass at the gate (nothing after it is computed)."""


def subject_token_ids(tokenizer, names: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """The token sequences a subject (or alias) may appear as: alone and after a space."""
    out: list[tuple[int, ...]] = []
    for name in names:
        name = name.strip()
        if not name:
            continue
        for text in (name, " " + name):
            ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
            if ids and ids not in out:
                out.append(ids)
    return tuple(out)


__all__ += ["RoutingKey", "routing_keys", "subject_token_ids"]
