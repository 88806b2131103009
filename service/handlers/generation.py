"""Asking the live model: generate text (whole or streamed) and score continuations.

Each query holds the ledger's read lock from its first forward pass to its last, off the
event loop, so it sees the weights wholly before or wholly after any edit and reports the
version that produced its answer. Generations are decoded together in waves
(``service.batcher``); scores run in worker threads. Queries run concurrently up to a
limit beyond which they are refused (429) rather than queued without bound.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator

from editor_core.encoding import EditInputError
from editor_core.generation import GenerationError, SamplingParams, TokenStream
from editor_core.probing import score_targets

from ..batcher import Finished
from ..errors import ServiceError
from ..lifecycle import LiveService
from ..schemas import (
    ErrorBody,
    ErrorOut,
    GenerateIn,
    GenerateOut,
    ScoreIn,
    ScoreOut,
    TargetScoreOut,
    Usage,
)
from .limits import check_tokens
from .pristine import pristine_routing, with_pristine


class QuerySlots:
    """Counts running generations and scores; refuses (429) beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self._lock = threading.Lock()  # given back from worker threads too

    def check(self) -> None:
        """429 when no slot is free now (before a stream's response starts)."""
        with self._lock:
            self._refuse_when_full()

    def take(self) -> None:
        with self._lock:
            self._refuse_when_full()
            self.running += 1

    def _refuse_when_full(self) -> None:
        if self.running >= self.limit:
            raise ServiceError(429, "busy", f"{self.running} queries are running; retry "
                               "shortly", {"running": self.running})

    def give(self) -> None:
        with self._lock:
            self.running -= 1


class GenerationHandler:
    """Generation and scoring on the live model, within the query limit."""

    def __init__(self, live: LiveService, slots: QuerySlots) -> None:
        self.live = live
        self.slots = slots

    def token_stream(self, body: GenerateIn) -> TokenStream:
        """A generation of ``body``, checked against the limits (422 beyond them)."""
        live, limits = self.live, self.live.settings.limits
        if body.max_new_tokens > limits.max_new_tokens:
            raise ServiceError(422, "too_many_tokens", f"max_new_tokens is "
                               f"{body.max_new_tokens}; at most {limits.max_new_tokens}",
                               {"limit": limits.max_new_tokens})
        check_tokens(live.tokenizer, body.prompt, limits.max_prompt_tokens, "prompt")
        params = SamplingParams(body.max_new_tokens, body.temperature, body.top_p, body.top_k,
                                body.seed, tuple(body.stop), body.ignore_eos)
        try:
            return TokenStream(live.model, live.tokenizer, body.prompt, params, live.routing)
        except GenerationError as exc:
            raise ServiceError(422, "prompt_too_long", str(exc)) from exc

    async def generate(self, body: GenerateIn) -> GenerateOut | AsyncIterator[dict]:
        """The whole answer (with ``compare_pristine``, the pristine model's beside it), or
        (``stream``) its server-sent events."""
        stream = self.token_stream(body)
        routing = pristine_routing(self.live, body) if body.compare_pristine else None
        if body.stream:
            self.slots.check()
            return self._events(stream)
        self.slots.take()
        try:
            if routing is not None:
                return await with_pristine(self.run(stream), routing, self.token_stream(body))
            return await self.run(stream)
        finally:
            self.slots.give()

    async def run(self, stream: TokenStream) -> GenerateOut:
        """A whole generation, decoded together with whatever else is being generated
        (the caller holds a query slot)."""
        done = await self.live.batcher.run(stream)
        return self._finished(stream, done.version, done.seconds)

    async def stream(self, stream: TokenStream) -> AsyncIterator[str | GenerateOut]:
        """A generation as it happens: each new piece of text, then the answer. Takes a
        query slot when it starts and gives it back when it ends or the client leaves (a
        response never sent holds none)."""
        self.slots.take()
        try:
            async for item in self.live.batcher.stream(stream):
                if isinstance(item, Finished):
                    yield self._finished(stream, item.version, item.seconds)
                else:
                    yield item
        finally:
            self.slots.give()

    async def _events(self, stream: TokenStream) -> AsyncIterator[dict]:
        """Server-sent events: ``token`` events, then ``done`` (or ``error``)."""
        try:
            async for piece in self.stream(stream):
                if isinstance(piece, str):
                    yield {"event": "token", "data": json.dumps({"text": piece})}
                else:
                    yield {"event": "done", "data": piece.model_dump_json()}
        except Exception as exc:  # after the first byte, an error can only be an event
            error = ErrorOut(error=ErrorBody(code="generation_failed", message=str(exc)))
            self.live.metrics.errors.labels("generation_failed").inc()  # as every error
            yield {"event": "error", "data": error.model_dump_json()}

    def _finished(self, stream: TokenStream, version: int, seconds: float) -> GenerateOut:
        """Record a finished generation in the metrics; its answer."""
        m = self.live.metrics
        m.generation_seconds.observe(seconds)
        m.generated_tokens.inc(stream.completion_tokens)
        if stream.completion_tokens:
            m.time_per_token_seconds.observe(seconds / stream.completion_tokens)
        return GenerateOut(text=stream.text, finish_reason=stream.finish_reason,
                           usage=Usage(prompt_tokens=stream.prompt_tokens,
                                       completion_tokens=stream.completion_tokens),
                           version=version, edits_fired=list(stream.edits_fired))

    async def score(self, body: ScoreIn) -> ScoreOut:
        """Each target's log-probability and teacher-forced accuracy after the prompt."""
        live, limits = self.live, self.live.settings.limits
        check_tokens(live.tokenizer, body.prompt, limits.max_prompt_tokens, "prompt")
        for target in body.targets:
            check_tokens(live.tokenizer, target, limits.max_target_tokens, "target")
        self.slots.take()

        def run() -> ScoreOut:
            with live.ledger.reading():
                version = live.ledger.version
                scores = score_targets(live.model, live.tokenizer,
                                       [body.prompt] * len(body.targets), body.targets,
                                       live.editor.max_length)
            return ScoreOut(version=version, scores=[
                TargetScoreOut(target=t, probability=s.probability, logprob=s.logprob,
                               token_accuracy=s.token_accuracy, tokens=s.tokens)
                for t, s in zip(body.targets, scores)])

        try:
            return await asyncio.to_thread(run)
        except EditInputError as exc:
            raise ServiceError(422, "invalid_target", str(exc)) from exc
        finally:
            self.slots.give()
