"""Token-by-token generation with sampling, stop strings and streaming.

A ``TokenStream`` is one request's decoding state: its own ``torch.Generator`` (a seed
reproduces a sample whatever else runs — ``torch.manual_seed`` is global and would not),
transformers' own warpers (temperature, top-k, top-p; temperature 0, or below
``MIN_SAMPLING_TEMPERATURE``, is greedy decoding), and incremental detokenisation that holds
text back while it could still be the start of a stop string or ends in half a UTF-8
character, so a stream never shows text the final answer does not contain. It decodes
alone (iterate it), or together with others in one batch (``generate_together``): one
forward pass per step serves every sequence, which is how concurrent requests share the
machine. Batched logits can differ from solo ones in the last float bits.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import (
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .routing import MemoryRouting

FinishReason = Literal["stop", "length"]
# Below this temperature, sampling is argmax in all but name, and dividing the logits by it
# overflows to infinity: it is decoded greedily.
MIN_SAMPLING_TEMPERATURE = 1e-5


class GenerationError(ValueError):
    """A request the model cannot serve (a prompt too long for its context)."""


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 32
    temperature: float = 0.0  # below MIN_SAMPLING_TEMPERATURE: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    seed: int | None = None
    stop: Sequence[str] = ()
    ignore_eos: bool = False  # never choose the end token: exactly max_new_tokens

    @property
    def sampling(self) -> bool:
        return self.temperature >= MIN_SAMPLING_TEMPERATURE

    def warpers(self) -> LogitsProcessorList:
        out = LogitsProcessorList()
        if self.sampling:
            out.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k > 0:
                out.append(TopKLogitsWarper(self.top_k))
            if self.top_p < 1.0:
                out.append(TopPLogitsWarper(self.top_p))
        return out


@dataclass
class TokenStream:
    """Iterate for the new text piece by piece; once exhausted, the totals are set."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    prompt: str
    params: SamplingParams
    routing: MemoryRouting | None = None  # the edit memory's routing of ``model``, if any
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: FinishReason | None = None
    edits_fired: tuple[str, ...] = ()  # the edit memory's entries that acted on it
    _ids: list[int] = field(default_factory=list)
    _new: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        limit = getattr(self.model.config, "n_positions", None) or getattr(
            self.model.config, "max_position_embeddings", None)
        self._ids = self.tokenizer(self.prompt)["input_ids"]
        self.prompt_tokens = len(self._ids)
        if not self._ids:
            raise GenerationError("the prompt produced no tokens")
        if limit is not None and self.prompt_tokens + self.params.max_new_tokens > limit:
            raise GenerationError(
                f"the prompt is {self.prompt_tokens} tokens; with max_new_tokens "
                f"{self.params.max_new_tokens} that exceeds the model's context of {limit}")

    # -- one sequence's decoding state, shared by the single and the batched loops --------
    def begin(self, device: torch.device | str) -> None:
        """Reset the decoding state; the sampler's generator lives on ``device``."""
        self._generator = torch.Generator(device=device)
        if self.params.seed is not None:
            self._generator.manual_seed(self.params.seed)
        else:
            self._generator.seed()
        self._warpers = self.params.warpers()
        self._hold = max((len(s) for s in self.params.stop), default=1) - 1
        self._new: list[int] = []
        self._emitted = 0
        self.text, self.finish_reason = "", None
        self.edits_fired = ()

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def choose(self, logits: torch.Tensor) -> int:
        """The next token from this sequence's next-token logits ([vocab])."""
        logits = logits.float().unsqueeze(0)
        eos = self.tokenizer.eos_token_id
        if self.params.ignore_eos and eos is not None:
            logits[0, eos] = float("-inf")
        if not self.params.sampling:
            return int(logits.argmax(-1))
        # these warpers look at the logits only, not the ids
        scores = self._warpers(torch.empty(1, 0, dtype=torch.long), logits)
        return int(torch.multinomial(torch.softmax(scores, -1), 1, generator=self._generator))

    def accept(self, token: int) -> str:
        """Take the next token; the text that is now certain (held back while it could
        begin a stop string or ends in half a character). Sets ``finish_reason`` at the
        end, and the final piece is returned then too."""
        if token == self.tokenizer.eos_token_id:
            self.finish_reason = "stop"
            return self._rest()
        self._new.append(token)
        text = self.tokenizer.decode(self._new, skip_special_tokens=True)
        cut = _first_stop(text, self.params.stop, max(0, self._emitted - self._hold))
        if cut is not None:
            self.text, self.finish_reason = text[:cut], "stop"
            return self._rest()
        self.text = text
        if len(self._new) == self.params.max_new_tokens:
            self.finish_reason = "length"
            return self._rest()
        ready = len(text) - self._hold
        if text.endswith("\ufffd"):  # half a character: wait for the rest
            ready = min(ready, len(text) - 1)
        if ready <= self._emitted:
            return ""
        piece, self._emitted = text[self._emitted:ready], ready
        return piece

    def _rest(self) -> str:
        self.completion_tokens = len(self._new)
        piece, self._emitted = self.text[self._emitted:], len(self.text)
        return piece

    def cancel(self) -> None:
        """Stop early (the client left): the text so far stands."""
        if not self.done:
            self.finish_reason = "stop"
            self.completion_tokens = len(self._new)

    @property
    def prompt_ids(self) -> list[int]:
        return list(self._ids)

    # -- one sequence on its own ------------------------------------------------------------
    @torch.no_grad()
    def __iter__(self) -> Iterator[str]:
        device = next(self.model.parameters()).device
        self.begin(device)
        step_input = torch.tensor([self._ids], device=device)
        cache = None
        with _session(self.routing) as session:
            while True:
                mask = torch.ones(1, self.prompt_tokens + len(self._new), dtype=torch.long,
                                  device=device)
                out = self.model(input_ids=step_input, attention_mask=mask,
                                 cache=cache, use_cache=True, logits_to_keep=1)
                cache = out.cache
                if session is not None:
                    self.edits_fired = session.fired(0)
                token = self.choose(out.logits[0, -1])
                piece = self.accept(token)
                if piece:
                    yield piece
                if self.done:
                    return
                step_input = torch.tensor([[token]], device=device)

    def run(self) -> str:
        """Generate to the end; the whole new text."""
        for _ in self:
            pass
        return self.text


@torch.no_grad()
def generate_together(model: PreTrainedModel, streams: Sequence[TokenStream]
                      ) -> Iterator[tuple[int, str]]:
    """Decode several sequences in one batch — one forward pass per step for all of them —
    yielding ``(index, piece)`` as each produces text, and once more when it finishes (the
    piece may be empty then); a finished sequence — or one stopped from outside with
    ``cancel`` — leaves the batch. Prompts are left-padded, with positions counted from each
    prompt's first token, so each sequence decodes as it would alone (up to float
    rounding). The streams share ``model`` and its routing."""
    routing = streams[0].routing
    if any(s.routing is not routing for s in streams):
        raise ValueError("streams decoded together must share the edit memory's routing")
    device = next(model.parameters()).device
    for stream in streams:
        stream.begin(device)
    pad = streams[0].tokenizer.pad_token_id or 0
    width = max(s.prompt_tokens for s in streams)
    ids = torch.tensor([[pad] * (width - s.prompt_tokens) + s.prompt_ids for s in streams],
                       device=device)
    mask = torch.tensor([[0] * (width - s.prompt_tokens) + [1] * s.prompt_tokens
                         for s in streams], device=device)
    live = list(range(len(streams)))  # batch row → stream index
    cache = None
    with _session(routing) as session:
        while live:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                        cache=cache, use_cache=True, logits_to_keep=1)
            cache = out.cache
            tokens, keep = [], []
            for row, index in enumerate(live):
                if streams[index].done:  # cancelled while the step ran
                    continue
                if session is not None:
                    streams[index].edits_fired = session.fired(row)
                token = streams[index].choose(out.logits[row, -1])
                piece = streams[index].accept(token)
                if piece or streams[index].done:
                    yield index, piece
                if not streams[index].done:
                    keep.append(row)
                    tokens.append(token)
            if len(keep) < len(live):
                rows = torch.tensor(keep, dtype=torch.long, device=device)
                cache.batch_select_indices(rows)
                if session is not None:
                    session.select(keep)
                mask = mask[rows]
                live = [live[row] for row in keep]
            if not live:
                return
            ids = torch.tensor([[t] for t in tokens], device=device)
            mask = torch.cat([mask, torch.ones(len(live), 1, dtype=mask.dtype,
                                               device=device)], 1)


def _session(routing: MemoryRouting | None):
    """The routing session of one decoding loop (a null context yielding None without an
    edit memory)."""
    return nullcontext() if routing is None else routing.session()


def _first_stop(text: str, stops: Sequence[str], start: int) -> int | None:
    """Where the earliest stop string begins in ``text`` (searching from ``start``)."""
    found = [i for s in stops if s and (i := text.find(s, start)) >= 0]
    return min(found) if found else None
