"""Token-by-token generation with sampling, stop strings and streaming.

One request at a time per call, with its own ``torch.Generator``: a seeded sample is
reproducible however many other generations run at once (``torch.manual_seed`` is global
and would not be). Logits are shaped by transformers' own warpers (temperature, top-k,
top-p); temperature 0 (or below ``MIN_SAMPLING_TEMPERATURE``) is greedy decoding. Text is detokenised incrementally and held back
while it could still be the start of a stop string or ends in half a UTF-8 character, so a
stream never shows text the final answer does not contain.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: FinishReason | None = None
    _ids: list[int] = field(default_factory=list)

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

    @torch.no_grad()
    def __iter__(self) -> Iterator[str]:
        p = self.params
        device = next(self.model.parameters()).device
        generator = torch.Generator(device=device)
        if p.seed is not None:
            generator.manual_seed(p.seed)
        else:
            generator.seed()
        warpers = p.warpers()
        eos = self.tokenizer.eos_token_id
        hold = max((len(s) for s in p.stop), default=1) - 1
        input_ids = torch.tensor([self._ids], device=device)
        new: list[int] = []
        cache, emitted = None, 0
        step_input = input_ids
        while True:
            mask = torch.ones(1, self.prompt_tokens + len(new), dtype=torch.long, device=device)
            out = self.model(input_ids=step_input, attention_mask=mask, past_key_values=cache,
                             use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1, :].float()
            if p.sampling:  # these warpers look at the logits only, not the ids
                scores = warpers(input_ids, logits)
                token = int(torch.multinomial(torch.softmax(scores, -1), 1,
                                              generator=generator))
            else:
                token = int(logits.argmax(-1))
            if token == eos:
                self.finish_reason = "stop"
                break
            new.append(token)
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            cut = _first_stop(text, p.stop, max(0, emitted - hold))
            if cut is not None:
                self.text, self.finish_reason = text[:cut], "stop"
                break
            self.text = text
            if len(new) == p.max_new_tokens:
                self.finish_reason = "length"
                break
            ready = len(text) - hold
            if text.endswith("\ufffd"):  # half a character: wait for the rest
                ready = min(ready, len(text) - 1)
            if ready > emitted:
                yield text[emitted:ready]
                emitted = ready
            step_input = torch.tensor([[token]], device=device)
        self.completion_tokens = len(new)
        if len(self.text) > emitted:
            yield self.text[emitted:]

    def run(self) -> str:
        """Generate to the end; the whole new text."""
        for _ in self:
            pass
        return self.text


def _first_stop(text: str, stops: Sequence[str], start: int) -> int | None:
    """Where the earliest stop string begins in ``text`` (searching from ``start``)."""
    found = [i for s in stops if s and (i := text.find(s, start)) >= 0]
    return min(found) if found else None
