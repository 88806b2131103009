"""OpenAI-compatible completions: existing clients (the ``openai`` package, LangChain's
OpenAI LLM) query the live, edited model unchanged.

``POST /v1/completions`` (whole or streamed as ``data:`` chunks ending in ``[DONE]``) and
``GET /v1/models``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sse_starlette import EventSourceResponse

from ..deps import Completions, ReadKey
from ..schemas import CompletionIn, CompletionOut, ModelListOut

router = APIRouter(prefix="/v1", tags=["openai"])


@router.get("/models", response_model=ModelListOut)
async def models(completions: Completions, _: ReadKey) -> ModelListOut:
    """The one model this service serves (with its live edits)."""
    return completions.models()


@router.post("/completions", response_model=CompletionOut,
             responses={200: {"content": {"text/event-stream": {"description":
                        "with stream: data chunks in OpenAI's format, then [DONE]"}}}})
async def completions(body: CompletionIn, completions: Completions, _: ReadKey) -> Any:
    """Complete each prompt with the live (edited) model, in OpenAI's completion format."""
    answer = await completions.complete(body)
    return answer if isinstance(answer, CompletionOut) else EventSourceResponse(answer)
