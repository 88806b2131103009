"""OpenAI-compatible completions: existing clients (the ``openai`` package, LangChain's
OpenAI LLM and chat model) query the live, edited model unchanged.

``POST /v1/completions`` and ``POST /v1/chat/completions`` (whole or streamed as ``data:``
chunks ending in ``[DONE]``) and ``GET /v1/models``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse

from ..deps import Chat, Completions, ReadKey
from ..disconnect import until_disconnected
from ..schemas import ChatCompletionIn, ChatCompletionOut, CompletionIn, CompletionOut, ModelListOut

router = APIRouter(prefix="/v1", tags=["openai"])


@router.get("/models", response_model=ModelListOut)
async def models(completions: Completions, _: ReadKey) -> ModelListOut:
    """The one model this service serves (with its live edits)."""
    return completions.models()


@router.post("/completions", response_model=CompletionOut,
             responses={200: {"content": {"text/event-stream": {"description":
                        "with stream: data chunks in OpenAI's format, then [DONE]"}}}})
async def completions(body: CompletionIn, completions: Completions, _: ReadKey,
                      request: Request) -> Any:
    """Complete each prompt with the live (edited) model, in OpenAI's completion format."""
    answer = await until_disconnected(request, completions.complete(body))
    return answer if isinstance(answer, (CompletionOut, Response)) else EventSourceResponse(
        answer)


@router.post("/chat/completions", response_model=ChatCompletionOut,
             responses={200: {"content": {"text/event-stream": {"description":
                        "with stream: chat.completion.chunk data chunks, then [DONE]"}}}})
async def chat_completions(body: ChatCompletionIn, chat: Chat, _: ReadKey,
                           request: Request) -> Any:
    """Answer the conversation's next assistant turn with the live (edited) model, through
    the model's chat template, in OpenAI's chat format."""
    answer = await until_disconnected(request, chat.complete(body))
    return answer if isinstance(answer, (ChatCompletionOut, Response)) else \
        EventSourceResponse(answer)
