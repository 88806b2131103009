"""Asking the live model: generate text (whole or streamed) and score continuations."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse

from ..deps import Generation, ReadKey
from ..disconnect import until_disconnected
from ..schemas import GenerateIn, GenerateOut, ScoreIn, ScoreOut

router = APIRouter(tags=["model"])


@router.post("/generate", response_model=GenerateOut,
             responses={200: {"content": {"text/event-stream": {"description":
                        "with stream: token events {text}, then a done event (the same "
                        "body as without stream)"}}}})
async def generate(body: GenerateIn, generation: Generation, _: ReadKey,
                   request: Request) -> Any:
    """Continue the prompt with the live (edited) model: greedy at temperature 0, else
    sampled (top-k, top-p, seed); stops at a stop string, the end token or max_new_tokens.

    With ``compare_pristine``, the answer also carries ``pristine``: the same request
    answered by the pristine model (no edit acting), so the two answers and
    ``edits_fired`` show what the edits changed. Only under the edit memory (422
    ``pristine_unavailable`` under a merged combination), and not with ``stream``."""
    answer = await until_disconnected(request, generation.generate(body))
    return answer if isinstance(answer, (GenerateOut, Response)) else EventSourceResponse(
        answer)


@router.post("/score", response_model=ScoreOut)
async def score(body: ScoreIn, generation: Generation, _: ReadKey) -> ScoreOut:
    """How likely the live model finds each target as the prompt's continuation:
    log-probability (natural log, summed over tokens) and teacher-forced accuracy."""
    return await generation.score(body)
