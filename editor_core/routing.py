"""The routing runtime: how a model's forward passes consult an edit memory.

``MemoryRouting(memory, model)`` hooks the model once: its gate module's input decides,
per sequence and position, which entry of the memory acts, and each edited module's output
gets that entry's low-rank change (``lowrank.low_rank_change``) at those positions — in
prefill and decode, never as a dense matrix. Whoever runs the model enters it explicitly:

- ``session()`` around a decoding loop: the routing state of each batch row lives across
  the steps of a KV cache (``generation`` takes it as ``routing``);
- ``trial(entries)``: this thread routes as if ``entries`` were active too, publishing
  nothing (how an edit is judged on the live memory before it is stored);
- ``pristine()``: this thread routes on no entries (the pristine model's answers, while
  other threads keep routing on the published memory).

A forward pass outside a session (teacher-forced scoring of whole sequences) routes on its
own. All state is per runtime and per thread: two models, or two threads, never share it.

Per sequence, routing follows three rules:

- an entry becomes *eligible* once one of its subject's token sequences has appeared in the
  sequence (an entry without a subject is eligible everywhere, behind a stricter threshold);
- at each position, the gate input (centred on the base model's background mean) is
  compared by cosine with the keys of the eligible entries; the first position where one
  reaches the threshold *fires* the best-matching entry there, and a later position whose
  best match beats every cosine the acting entry reached hands over to that entry (one
  entry acts at each position: an early, loose match of another edit of the same subject
  gives way to the prompt's own key);
- the acting entry acts from where it fired until its answer is written or left.

The gate module's input is computed before any edited weight acts, so routing never
depends on the edits themselves. Ties break by edit id, never by arrival order.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from .lowrank import low_rank_change
from .memory import EMPTY_INDEX, EditMemory, MemoryEntry, MemoryIndex
from .routing_config import RoutingConfig

__all__ = ["MemoryRouting", "RoutingSession"]


class MemoryRouting:
    """An edit memory's routing of one model's forward passes (its hooks stay on the model
    until ``close``)."""

    def __init__(self, memory: EditMemory, model: nn.Module) -> None:
        self.memory = memory
        self.model = model
        self._local = threading.local()  # .override: an index; .session: RoutingSession
        modules = dict(model.named_modules())
        edited = list(memory.modules.values())
        order = [n for n, _ in model.named_modules() if n in memory.modules.values()]
        if order[0] != memory.config.gate:
            raise ValueError(f"the gate {memory.config.gate!r} must be the first edited "
                             f"module ({order[0]!r}), so routing never sees an edit's effect")
        base = getattr(model, "base_model", model)
        self._hooks = [
            base.register_forward_pre_hook(self._on_inputs, with_kwargs=True),
            base.register_forward_hook(self._on_done),
            modules[memory.config.gate].register_forward_pre_hook(self._on_gate),
            *(modules[name].register_forward_hook(self._applier(name)) for name in edited)]

    def close(self) -> None:
        """Take the hooks off the model: its passes no longer consult this memory."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    # -- what whoever runs the model enters ----------------------------------------------
    @contextmanager
    def session(self) -> Iterator[RoutingSession]:
        """A routing state for one decoding loop in this thread (rows = batch rows)."""
        previous = getattr(self._local, "session", None)
        self._local.session = RoutingSession(self.memory.config, self._index())
        try:
            yield self._local.session
        finally:
            self._local.session = previous

    def trial(self, entries: Sequence[MemoryEntry]):
        """Route this thread's forward passes as if ``entries`` were active too."""
        return self._reading(self.memory.index.with_entries(entries))

    def pristine(self):
        """Route this thread's forward passes on no entries at all (the weights are never
        rewritten, so nothing else needs pausing)."""
        return self._reading(EMPTY_INDEX)

    @contextmanager
    def _reading(self, index: MemoryIndex) -> Iterator[None]:
        previous = getattr(self._local, "override", None)
        self._local.override = index
        try:
            yield
        finally:
            self._local.override = previous

    def _index(self) -> MemoryIndex:
        """The index this thread routes on: an override's, else the published one."""
        override = getattr(self._local, "override", None)
        return override if override is not None else self.memory.index

    # -- the hooks -----------------------------------------------------------------------
    def _on_inputs(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        session = getattr(self._local, "session", None)
        if ids is None:
            return None
        if session is None or session.ephemeral:  # a pass of its own
            index = self._index()
            if not index.entries:
                self._local.session = None
                return None
            session = RoutingSession(self.memory.config, index, ephemeral=True)
            self._local.session = session
        mask = kwargs.get("attention_mask")
        session.feed(ids, None if mask is None else mask[:, -ids.shape[1]:])
        return None

    def _on_done(self, module, args, output):
        session = getattr(self._local, "session", None)
        if session is not None and session.ephemeral:
            self._local.session = None
        return None

    def _on_gate(self, module, args):
        session = getattr(self._local, "session", None)
        if session is not None:
            session.route(args[0])
        return None

    def _applier(self, module_name: str):
        def hook(module, args, output):
            session = getattr(self._local, "session", None)
            if session is None or not session.applying:
                return None
            x = args[0]
            out = output.clone()
            for row, entry, start, stop in session.applying:
                u, d, step = entry.factors[module_name]
                change = low_rank_change(x[row, start:stop], u, d, step)
                out[row, start:stop] -= change.to(out.dtype)
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

    def __init__(self, config: RoutingConfig, index: MemoryIndex, ephemeral: bool = False
                 ) -> None:
        self.config = config
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
        config, index = self.config, self.index
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
              config: RoutingConfig, index: MemoryIndex) -> list[tuple[int, MemoryEntry | None]]:
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
           config: RoutingConfig, index: MemoryIndex) -> _Contest:
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
