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
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from sse_starlette import EventSourceResponse

from editor_core.encoding import EditInputError
from editor_core.generation import GenerationError, SamplingParams, TokenStream
from editor_core.probing import score_targets

from ..auth import Principal, require
from ..batcher import Finished
from ..errors import ServiceError
from ..lifecycle import LiveService
from ..pristine import pristine_memory, with_pristine
from ..schemas import GenerateIn, GenerateOut, ScoreIn, ScoreOut, TargetScoreOut, Usage
from .deps import QuerySlots, check_tokens, live_service, query_slots

router = APIRouter(tags=["model"])
Live = Annotated[LiveService, Depends(live_service)]
Reader = Annotated[Principal, Depends(require("read"))]
Slots = Annotated[QuerySlots, Depends(query_slots)]


def token_stream(live: LiveService, body: GenerateIn) -> TokenStream:
    """A generation of ``body``, checked against the limits (422 beyond them)."""
    limits = live.settings.limits
    if body.max_new_tokens > limits.max_new_tokens:
        raise ServiceError(422, "too_many_tokens", f"max_new_tokens is {body.max_new_tokens}; "
                           f"at most {limits.max_new_tokens}",
                           {"limit": limits.max_new_tokens})
    check_tokens(live, body.prompt, limits.max_prompt_tokens, "prompt")
    params = SamplingParams(body.max_new_tokens, body.temperature, body.top_p, body.top_k,
                            body.seed, tuple(body.stop), body.ignore_eos)
    try:
        return TokenStream(live.model, live.tokenizer, body.prompt, params)
    except GenerationError as exc:
        raise ServiceError(422, "prompt_too_long", str(exc)) from exc


def finished(live: LiveService, stream: TokenStream, version: int, seconds: float
             ) -> GenerateOut:
    """Record a finished generation in the metrics; its answer."""
    m = live.engine.metrics
    m.generation_seconds.observe(seconds)
    m.generated_tokens.inc(stream.completion_tokens)
    if stream.completion_tokens:
        m.time_per_token_seconds.observe(seconds / stream.completion_tokens)
    return GenerateOut(text=stream.text, finish_reason=stream.finish_reason,
                       usage=Usage(prompt_tokens=stream.prompt_tokens,
                                   completion_tokens=stream.completion_tokens),
                       version=version, edits_fired=list(stream.edits_fired))


@router.post("/generate", response_model=GenerateOut,
             responses={200: {"content": {"text/event-stream": {"description":
                        "with stream: token events {text}, then a done event (the same "
                        "body as without stream)"}}}})
async def generate(body: GenerateIn, live: Live, _: Reader, slots: Slots) -> Any:
    """Continue the prompt with the live (edited) model: greedy at temperature 0, else
    sampled (top-k, top-p, seed); stops at a stop string, the end token or max_new_tokens.

    With ``compare_pristine``, the answer also carries ``pristine``: the same request
    answered by the pristine model (no edit acting), so the two answers and
    ``edits_fired`` show what the edits changed. Only under the edit memory (422
    ``pristine_unavailable`` under a merged combination), and not with ``stream``."""
    stream = token_stream(live, body)
    memory = pristine_memory(live, body) if body.compare_pristine else None
    slots.take()
    if body.stream:
        return EventSourceResponse(_events(live, stream, slots))
    try:
        if memory is not None:
            return await with_pristine(run_generation(live, stream), memory,
                                       token_stream(live, body))
        return await run_generation(live, stream)
    finally:
        slots.give()


async def run_generation(live: LiveService, stream: TokenStream) -> GenerateOut:
    """A whole generation, decoded together with whatever else is being generated."""
    done = await live.batcher.run(stream)
    return finished(live, stream, done.version, done.seconds)


async def _events(live: LiveService, stream: TokenStream, slots: QuerySlots
                  ) -> AsyncIterator[dict]:
    """Server-sent events: ``token`` events, then ``done`` (or ``error``)."""
    try:
        async for piece in stream_generation(live, stream, slots):
            if isinstance(piece, str):
                yield {"event": "token", "data": json.dumps({"text": piece})}
            else:
                yield {"event": "done", "data": piece.model_dump_json()}
    except Exception as exc:  # after the first byte, an error can only be an event
        error = {"code": "generation_failed", "message": str(exc), "details": {}}
        yield {"event": "error", "data": json.dumps({"error": error})}


async def stream_generation(live: LiveService, stream: TokenStream, slots: QuerySlots
                            ) -> AsyncIterator[str | GenerateOut]:
    """A generation as it happens: each new piece of text, then the answer. Gives the query
    slot back when the generation ends or the client leaves (which stops it)."""
    try:
        async for item in live.batcher.stream(stream):
            if isinstance(item, Finished):
                yield finished(live, stream, item.version, item.seconds)
            else:
                yield item
    finally:
        slots.give()


@router.post("/score", response_model=ScoreOut)
async def score(body: ScoreIn, live: Live, _: Reader, slots: Slots) -> ScoreOut:
    """How likely the live model finds each target as the prompt's continuation:
    log-probability (natural log, summed over tokens) and teacher-forced accuracy."""
    limits = live.settings.limits
    check_tokens(live, body.prompt, limits.max_prompt_tokens, "prompt")
    for target in body.targets:
        check_tokens(live, target, limits.max_target_tokens, "target")
    slots.take()

    def run() -> ScoreOut:
        with live.ledger.reading():
            version = live.ledger.version
            scores = score_targets(live.model, live.tokenizer, [body.prompt] * len(body.targets),
                                   body.targets, live.editor.max_length)
        return ScoreOut(version=version, scores=[
            TargetScoreOut(target=t, probability=s.probability, logprob=s.logprob,
                           token_accuracy=s.token_accuracy, tokens=s.tokens)
            for t, s in zip(body.targets, scores)])

    try:
        return await asyncio.to_thread(run)
    except EditInputError as exc:
        raise ServiceError(422, "invalid_target", str(exc)) from exc
    finally:
        slots.give()
