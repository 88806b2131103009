"""The other names a model knows for an edit's subject, found by asking the model itself.

An edit about an entity must hold when the entity is named by any name the model knows for
it, but routing fires an edit only where one of its subject's spellings appears, and a
client rarely lists every alias. So at edit time the service asks the pristine model: a
beam search continues openings such as "{s} is also known as" and each line it writes is a
*candidate* name. A candidate is accepted only when the model answers the subject's other
facts about it exactly as about the subject: the first statement of every relation the
catalogue asks of that kind of subject, greedy, token for token. A neighbour that shares a
name part (another person with the same surname) answers differently and is refused, and
so is a name the model invents.

Accepted names become the edit's aliases (subject spellings for routing) and, with the
subject replaced in the sent prompt and in the relation's first question, rows of its fit
(derived wordings: never a reason to refuse the edit).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from .answers import answer_line
from .chat_template import chat_wordings
from .generation import SamplingParams, TokenStream, generate_together
from .probing import score_targets

if TYPE_CHECKING:
    from .editor import EditRequest, Editor

__all__ = ["AliasSearch", "AliasFinder"]


@dataclass(frozen=True)
class AliasSearch:
    """How names are searched: the openings (``{s}`` for the subject), the beams kept per
    opening, the longest name in tokens, and how many facts must agree (at least two: one
    shared fact is too common to tell two entities apart)."""

    openings: tuple[str, ...] = ("{s} is also known as",)
    beams: int = 16
    max_name_tokens: int = 8
    min_facts: int = 2


class AliasFinder:
    """Finds the names an editor's model (pristine under the pristine basis) knows for a
    subject, and widens edit requests with them. Answers are cached per subject and kind of
    subject: the pristine model never changes while it serves (under the current basis,
    a subject keeps the names found on the weights of its first edit)."""

    def __init__(self, editor: Editor, search: AliasSearch | None = None,
                 cache_size: int = 4096) -> None:
        self.editor = editor
        self.search = search or AliasSearch()
        self._cache: OrderedDict[tuple[str, str], tuple[str, ...]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def widen(self, request: EditRequest) -> EditRequest:
        """``request`` with the names found for its subject as aliases (subject spellings
        for routing) and, for each, the sent prompt and the relation's first question with
        the name for the subject as derived wordings (routing keys and rows of the fit),
        questions also as a chat user asks them."""
        found = self.find(request.subject, request.relation, request.aliases)
        if not found or not request.subject or not request.relation:
            return request
        subject = request.subject.strip()
        forms = self.editor.relation_forms.forms.get(request.relation.strip().lower(), ())
        question = next((t for t in forms if t.rstrip().endswith("?")), None)
        seen = {p.strip().lower() for p in (request.prompt, *request.rephrases,
                                           *request.derived)}
        derived = list(request.derived)
        for alias in found:
            wordings = [request.prompt.replace(subject, alias)] if subject in request.prompt \
                else []
            if question is not None:
                wordings.append(question.replace("{s}", alias))
            # a chat user asks by the alias too: inside the template's turn markers
            for wording in (*wordings, *chat_wordings(self.editor.tokenizer, wordings)):
                if wording.strip().lower() not in seen:
                    seen.add(wording.strip().lower())
                    derived.append(wording)
        return replace(request, aliases=(*request.aliases, *found), derived=tuple(derived))

    def probes(self, relation: str | None) -> tuple[str, ...]:
        """The first statement of each relation asked of the relation's kind of subject."""
        forms = self.editor.relation_forms
        kind = forms.subject_kinds.get((relation or "").strip().lower())
        if kind is None:
            return ()
        out = []
        for name, templates in sorted(forms.forms.items()):
            if forms.subject_kinds.get(name) != kind:
                continue
            statement = next((t for t in templates if not t.rstrip().endswith("?")), None)
            if statement is not None:
                out.append(statement)
        return tuple(out)

    def find(self, subject: str | None, relation: str | None,
             known: Sequence[str] = ()) -> tuple[str, ...]:
        """The names the model knows for ``subject`` besides it and ``known``; none when
        the relation's kind of subject has fewer than ``min_facts`` relations."""
        probes = self.probes(relation)
        if not subject or not subject.strip() or len(probes) < self.search.min_facts:
            return ()
        key = (subject.strip(), "\n".join(probes))
        with self._lock:
            names = self._cache.get(key)
            if names is not None:
                self._cache.move_to_end(key)
        if names is None:
            names = self._search(key[0], probes)
            with self._lock:
                self._cache[key] = names
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        skip = {k.strip().lower() for k in known}
        return tuple(n for n in names if n.lower() not in skip)

    @torch.no_grad()
    def _search(self, subject: str, probes: Sequence[str]) -> tuple[str, ...]:
        asked = [p.replace("{s}", subject) for p in (*probes, *self.search.openings)]
        longest = max(len(self.editor.tokenizer(p)["input_ids"]) for p in asked)
        if longest + 2 * self.search.max_name_tokens > self.editor.max_length:
            return ()  # a subject too long to ask about in the model's context
        facts = self._answers([p.replace("{s}", subject) for p in probes])
        if any(not f for f in facts):
            return ()
        candidates = [c for c in self._candidates(subject) if c.lower() != subject.lower()]
        if not candidates:
            return ()
        editor = self.editor
        agree = candidates
        for probe, fact in zip(probes, facts):  # one fact at a time: most names fail the first
            scores = score_targets(editor.edit_model, editor.tokenizer,
                                   [probe.replace("{s}", c) for c in agree],
                                   [" " + fact] * len(agree), editor.max_length, batch_size=64)
            agree = [c for c, score in zip(agree, scores) if score.token_accuracy == 1.0]
            if not agree:
                return ()
        # a name wrapped around another accepted one ("F F. Zundsound") adds nothing
        return tuple(c for c in agree if not any(o != c and o in c for o in agree))

    def _answers(self, prompts: list[str]) -> list[str]:
        """The greedy answer to each prompt (the service's generation path, in one batch):
        its line, without a trailing period."""
        params = SamplingParams(max_new_tokens=self.search.max_name_tokens, stop=("\n",))
        streams = [TokenStream(self.editor.edit_model, self.editor.tokenizer, p, params)
                   for p in prompts]
        for _ in generate_together(self.editor.edit_model, streams):
            pass
        return [answer_line(s.text).rstrip(".").strip() for s in streams]

    def _beams(self, prompt: str) -> list[str]:
        """Beam search from ``prompt``: the lines the ``beams`` best continuations write
        (those that ended, and those still open at ``max_name_tokens``), best first by
        mean log-probability per token, as transformers ranks beams."""
        model, tok = self.editor.edit_model, self.editor.tokenizer
        ends = set(self.editor.endings.ends)
        device = next(model.parameters()).device
        ids = torch.tensor([tok(prompt)["input_ids"]], device=device)
        live: list[tuple[float, list[int]]] = [(0.0, [])]
        done: list[tuple[float, list[int]]] = []
        cache = None
        for _ in range(self.search.max_name_tokens):
            out = model(input_ids=ids, cache=cache, use_cache=True,
                        logits_to_keep=1)
            cache = out.cache
            logp = torch.log_softmax(out.logits[:, -1].float(), -1)
            total = logp + torch.tensor([score for score, _ in live], device=device)[:, None]
            beams = self.search.beams
            top = total.flatten().topk(min(2 * beams, total.numel()))
            rows, grown = [], []
            for rank, (value, flat) in enumerate(zip(top.values.tolist(),
                                                     top.indices.tolist())):
                row, token = divmod(flat, total.shape[1])
                if token in ends:  # a finished line counts among the best ``beams`` only,
                    if rank < beams:  # ranked by its mean log-probability per token
                        done.append((value / (len(live[row][1]) + 1), live[row][1]))
                elif len(grown) < beams:
                    rows.append(row)
                    grown.append((value, live[row][1] + [token]))
            if not grown:
                break
            cache.batch_select_indices(torch.tensor(rows, device=device))
            live = grown
            ids = torch.tensor([[seq[-1]] for _, seq in live], device=device)
        else:
            done += [(value / len(seq), seq) for value, seq in live]
        ranked = sorted(done, key=lambda found: -found[0])[:self.search.beams]
        return [answer_line(tok.decode(seq)) for _, seq in ranked]

    def _candidates(self, subject: str) -> list[str]:
        """Names the beams wrote, likeliest first: each line whole, and cut before each
        sentence end."""
        prompts = [o.replace("{s}", subject) for o in self.search.openings]
        out: list[str] = []
        for line in (line for p in prompts for line in self._beams(p)):
            cuts = [line.rstrip(".")] + [line[:i] for i in range(len(line))
                                         if line.startswith(". ", i)]
            for cut in (c.strip() for c in cuts):
                if len(cut) > 1 and cut not in out:
                    out.append(cut)
        return out
