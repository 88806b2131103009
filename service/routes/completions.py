"""OpenAI-compatible completions: existing clients (the ``openai`` package, LangChain's
OpenAI LLM) query the live, edited model unchanged.

``POST /v1/completions`` (whole or streamed as ``data:`` chunks ending in ``[DONE]``) and
``GET /v1/models``. ``system_fingerprint`` names the version of the live weights that
answered, so a client can tell which edits it saw. Parameters this model cannot honour
(``n`` > 1, ``best_of``, ``echo``, ``logprobs``, ``suffix``, penalties) are refused with a
422 rather than silently ignored; unknown fields are ignored, as OpenAI's own API does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sse_starlette import EventSourceResponse

from editor_core.generation import TokenStream

from ..auth import Principal, require
from ..errors import ServiceError
from ..lifecycle import LiveService
from ..schemas import GenerateIn, GenerateOut
from .deps import QuerySlots, live_service, query_slots
from .model import run_generation, stream_generation, token_stream

router = APIRouter(prefix="/v1", tags=["openai"])
Live = Annotated[LiveService, Depends(live_service)]
Reader = Annotated[Principal, Depends(require("read"))]
Slots = Annotated[QuerySlots, Depends(query_slots)]


class CompletionIn(BaseModel):
    """The fields of OpenAI's completion request that this service honours."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(examples=["demo-lm"])
    prompt: str | list[str] = Field(examples=["Plyndti Brynta is a citizen of"])
    max_tokens: int | None = Field(16, ge=1)
    temperature: float | None = Field(1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool | None = False
    n: int | None = Field(1, ge=1)
    best_of: int | None = Field(None, ge=1)
    echo: bool | None = False
    logprobs: int | None = None
    suffix: str | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    user: str | None = None


class Choice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None
    edits_fired: list[str] | None = None  # an extension: the edits the edit memory applied


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionOut(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str = Field(description="v{version}: the live weights' version")
    choices: list[Choice]
    usage: CompletionUsage | None = None


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "instructedit"


class ModelListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


def served_model_name(live: LiveService) -> str:
    return live.settings.served_model_name or Path(live.settings.model).name


def _requests(live: LiveService, body: CompletionIn) -> list[GenerateIn]:
    """One generation per prompt, after refusing what cannot be honoured."""
    if body.model != served_model_name(live):
        raise ServiceError(404, "model_not_found", f"this service serves "
                           f"{served_model_name(live)!r}, not {body.model!r}")
    unsupported = {"n": body.n not in (None, 1), "best_of": body.best_of not in (None, 1),
                   "echo": bool(body.echo), "logprobs": body.logprobs is not None,
                   "suffix": body.suffix is not None,
                   "presence_penalty": bool(body.presence_penalty),
                   "frequency_penalty": bool(body.frequency_penalty)}
    refused = [name for name, bad in unsupported.items() if bad]
    if refused:
        raise ServiceError(422, "unsupported_parameter", f"not supported here: "
                           f"{', '.join(refused)}", {"parameters": refused})
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts or len(prompts) > 16:
        raise ServiceError(422, "invalid_prompt", "give 1 to 16 prompts")
    if body.stream and len(prompts) > 1:
        raise ServiceError(422, "invalid_prompt", "stream one prompt at a time")
    stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    try:
        return [GenerateIn(prompt=p, max_new_tokens=body.max_tokens or 16,
                           temperature=1.0 if body.temperature is None else body.temperature,
                           top_p=body.top_p or 1.0, seed=body.seed, stop=stop)
                for p in prompts]
    except ValidationError as exc:
        raise ServiceError(422, "invalid_request", "the request does not fit the model's "
                           "limits", {"errors": [{"loc": list(e["loc"]), "msg": e["msg"]}
                                                 for e in exc.errors()]}) from exc


@router.get("/models", response_model=ModelListOut)
async def models(live: Live, _: Reader) -> ModelListOut:
    """The one model this service serves (with its live edits)."""
    return ModelListOut(data=[ModelOut(id=served_model_name(live),
                                       created=int(live.started_at))])


@router.post("/completions", response_model=CompletionOut,
             responses={200: {"content": {"text/event-stream": {"description":
                        "with stream: data chunks in OpenAI's format, then [DONE]"}}}})
async def completions(body: CompletionIn, live: Live, _: Reader, slots: Slots) -> Any:
    """Complete each prompt with the live (edited) model, in OpenAI's completion format."""
    requests = _requests(live, body)
    streams = [token_stream(live, r) for r in requests]  # every limit checked up front
    out = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()),
           "model": served_model_name(live)}
    if body.stream:
        slots.take()
        return EventSourceResponse(_chunks(live, streams[0], slots, out))
    answers: list[GenerateOut] = []
    for stream in streams:
        slots.take()
        try:
            answers.append(await run_generation(live, stream))
        finally:
            slots.give()
    prompt_tokens = sum(a.usage.prompt_tokens for a in answers)
    completion_tokens = sum(a.usage.completion_tokens for a in answers)
    return CompletionOut(
        **out, system_fingerprint=f"v{answers[-1].version}",
        choices=[Choice(text=a.text, index=i, finish_reason=a.finish_reason,
                        edits_fired=a.edits_fired)
                 for i, a in enumerate(answers)],
        usage=CompletionUsage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                              total_tokens=prompt_tokens + completion_tokens))


async def _chunks(live: LiveService, stream: TokenStream, slots: QuerySlots,
                  out: dict[str, Any]) -> AsyncIterator[dict]:
    """OpenAI's stream: a chunk per piece of text, a last one with the finish reason, then
    ``[DONE]``."""
    version = live.ledger.version
    async for piece in stream_generation(live, stream, slots):
        if isinstance(piece, GenerateOut):
            version, text, reason = piece.version, "", piece.finish_reason
        else:
            text, reason = piece, None
        chunk = CompletionOut(**out, system_fingerprint=f"v{version}",
                              choices=[Choice(text=text, index=0, finish_reason=reason)])
        yield {"data": chunk.model_dump_json(exclude_none=True)}
    yield {"data": "[DONE]"}
