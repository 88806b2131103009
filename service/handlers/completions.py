"""OpenAI-compatible completions on the live model.

``system_fingerprint`` names the version of the live weights that answered, so a client can
tell which edits it saw. Parameters this model cannot honour (``n`` > 1, ``best_of``,
``echo``, ``logprobs``, ``suffix``, penalties) are refused with a 422 rather than silently
ignored.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from editor_core.generation import TokenStream

from ..errors import ServiceError
from ..lifecycle import LiveService
from ..schemas import (
    Choice,
    CompletionIn,
    CompletionOut,
    CompletionUsage,
    GenerateIn,
    GenerateOut,
    ModelListOut,
    ModelOut,
)
from .generation import GenerationHandler


class CompletionHandler:
    """OpenAI's completions and models, answered by the generation handler."""

    def __init__(self, live: LiveService, generation: GenerationHandler) -> None:
        self.live = live
        self.generation = generation

    @property
    def model_name(self) -> str:
        return self.live.settings.served_model_name or Path(self.live.settings.model).name

    def models(self) -> ModelListOut:
        return ModelListOut(data=[ModelOut(id=self.model_name,
                                           created=int(self.live.started_at))])

    def check_model(self, name: str) -> None:
        """404 unless ``name`` is the served model's."""
        if name != self.model_name:
            raise ServiceError(404, "model_not_found", f"this service serves "
                               f"{self.model_name!r}, not {name!r}")

    def _requests(self, body: CompletionIn) -> list[GenerateIn]:
        """One generation per prompt, after refusing what cannot be honoured."""
        self.check_model(body.model)
        refuse_unsupported({
            "n": body.n not in (None, 1), "best_of": body.best_of not in (None, 1),
            "echo": bool(body.echo), "logprobs": body.logprobs is not None,
            "suffix": body.suffix is not None, "presence_penalty": bool(body.presence_penalty),
            "frequency_penalty": bool(body.frequency_penalty)})
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or len(prompts) > 16:
            raise ServiceError(422, "invalid_prompt", "give 1 to 16 prompts")
        if body.stream and len(prompts) > 1:
            raise ServiceError(422, "invalid_prompt", "stream one prompt at a time")
        stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
        return [generation_request(prompt=p, max_new_tokens=body.max_tokens or 16,
                                   temperature=body.temperature, top_p=body.top_p,
                                   seed=body.seed, stop=stop)
                for p in prompts]

    async def complete(self, body: CompletionIn) -> CompletionOut | AsyncIterator[dict]:
        """Each prompt's completion, or (``stream``) OpenAI's data chunks."""
        streams = [self.generation.token_stream(r) for r in self._requests(body)]
        out = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()),
               "model": self.model_name}
        slots = self.generation.slots
        if body.stream:
            slots.check()
            return self._chunks(streams[0], out)
        slots.take()  # one query, whose prompts are decoded together
        try:
            answers: list[GenerateOut] = await asyncio.gather(
                *(self.generation.run(stream) for stream in streams))
        finally:
            slots.give()
        return CompletionOut(
            **out, system_fingerprint=f"v{answers[-1].version}",
            choices=[Choice(text=a.text, index=i, finish_reason=a.finish_reason,
                            edits_fired=a.edits_fired)
                     for i, a in enumerate(answers)],
            usage=CompletionUsage.of([a.usage for a in answers]))

    async def _chunks(self, stream: TokenStream, out: dict[str, Any]) -> AsyncIterator[dict]:
        """OpenAI's stream: a chunk per piece of text, a last one with the finish reason,
        then ``[DONE]``."""
        version = self.live.ledger.version
        async for piece in self.generation.stream(stream):
            if isinstance(piece, GenerateOut):
                version, text, reason = piece.version, "", piece.finish_reason
            else:
                text, reason = piece, None
            chunk = CompletionOut(**out, system_fingerprint=f"v{version}",
                                  choices=[Choice(text=text, index=0, finish_reason=reason)])
            yield {"data": chunk.model_dump_json(exclude_none=True)}
        yield {"data": "[DONE]"}


def refuse_unsupported(asked: dict[str, bool]) -> None:
    """422 ``unsupported_parameter`` naming each parameter asked for that is not honoured
    (rather than silently ignoring it)."""
    refused = [name for name, bad in asked.items() if bad]
    if refused:
        raise ServiceError(422, "unsupported_parameter", f"not supported here: "
                           f"{', '.join(refused)}", {"parameters": refused})


def generation_request(*, temperature: float | None, top_p: float | None,
                       **fields: Any) -> GenerateIn:
    """The generation an OpenAI request asks for (OpenAI's defaults where it names none);
    422 ``invalid_request`` where it does not fit the model's limits."""
    try:
        return GenerateIn(temperature=1.0 if temperature is None else temperature,
                          top_p=top_p or 1.0, **fields)
    except ValidationError as exc:
        raise ServiceError(422, "invalid_request", "the request does not fit the model's "
                           "limits", {"errors": [{"loc": list(e["loc"]), "msg": e["msg"]}
                                                 for e in exc.errors()]}) from exc
