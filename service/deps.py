"""Every dependency the routes use, each defined once: the caller's key and the handlers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.exceptions import RequestValidationError

from .auth import Principal, require
from .errors import ServiceError
from .handlers import (
    ChatHandler,
    CompletionHandler,
    EditHandler,
    EditLogHandler,
    GenerationHandler,
    Handlers,
    SystemHandler,
)


def handlers(request: Request) -> Handlers:
    """The live service's handlers, or 503 while it is still starting (or stopping)."""
    live = getattr(request.app.state, "live", None)
    built: Handlers | None = getattr(request.app.state, "handlers", None)
    if live is None or not live.started or built is None:
        raise ServiceError(503, "not_ready", "the service is starting; retry shortly")
    return built


def _edits(request: Request) -> EditHandler:
    return handlers(request).edits


def _generation(request: Request) -> GenerationHandler:
    return handlers(request).generation


def _completions(request: Request) -> CompletionHandler:
    return handlers(request).completions


def _chat(request: Request) -> ChatHandler:
    return handlers(request).chat


def _system(request: Request) -> SystemHandler:
    return handlers(request).system


def _edit_log(request: Request) -> EditLogHandler:
    return handlers(request).edit_log


EditKey = Annotated[Principal, Depends(require("edit"))]
ReadKey = Annotated[Principal, Depends(require("read"))]
Edits = Annotated[EditHandler, Depends(_edits)]
Generation = Annotated[GenerationHandler, Depends(_generation)]
Completions = Annotated[CompletionHandler, Depends(_completions)]
Chat = Annotated[ChatHandler, Depends(_chat)]
System = Annotated[SystemHandler, Depends(_system)]
EditLog = Annotated[EditLogHandler, Depends(_edit_log)]
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", max_length=255,
    description="the same key returns the edit it first created, applying nothing twice")]
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID")]


def known_query(*names: str):
    """A dependency that refuses query parameters other than ``names`` (422
    ``invalid_request``): a misspelt filter or cursor must not be silently ignored."""
    def check(request: Request) -> None:
        unknown = [k for k in request.query_params if k not in names]
        if unknown:
            raise RequestValidationError([
                {"loc": ("query", k), "msg": f"unknown query parameter (known: "
                 f"{', '.join(names)})", "type": "extra_forbidden",
                 "input": request.query_params[k]} for k in unknown])
    return Depends(check)
