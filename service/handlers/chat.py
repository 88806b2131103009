"""OpenAI-compatible chat completions on the live model.

The conversation becomes a prompt through the model's own chat template (shipped with its
tokenizer), so the answer is the one the model gives in a chat turn, with every active edit
acting on it; the reply ends where the template ends an assistant's turn. A model without a chat template is refused (422
``no_chat_template``: use ``/v1/completions``); so are parameters it cannot honour.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from editor_core.generation import TokenStream

from ..errors import ServiceError
from ..lifecycle import LiveService
from ..schemas import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionIn,
    ChatCompletionOut,
    ChatDelta,
    ChatMessageOut,
    CompletionUsage,
    GenerateIn,
    GenerateOut,
)
from .completions import CompletionHandler, refuse_unsupported
from .generation import GenerationHandler


class ChatHandler:
    """OpenAI's chat completions, answered by the generation handler."""

    def __init__(self, live: LiveService, generation: GenerationHandler,
                 completions: CompletionHandler) -> None:
        self.live = live
        self.generation = generation
        self.completions = completions

    def prompt(self, body: ChatCompletionIn) -> str:
        """The conversation as the model's chat template writes it, ready for the
        assistant's turn."""
        tokenizer = self.live.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ServiceError(422, "no_chat_template", "this model's tokenizer ships no "
                               "chat template; use /v1/completions")
        messages = [{"role": m.role, "content": m.text} for m in body.messages]
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True)
        except Exception as exc:  # the template's own checks (jinja2's TemplateError)
            raise ServiceError(422, "invalid_messages", f"the chat template refused the "
                               f"messages: {exc}") from exc

    @functools.cached_property
    def turn_end(self) -> str | None:
        """What the template writes after an assistant's turn ("<|im_end|>", a line end):
        the reply stops there, as the model's own answers do (None: nothing marks it)."""
        marker = "\x00reply\x00"
        try:
            text = self.live.tokenizer.apply_chat_template(
                [{"role": "user", "content": "?"}, {"role": "assistant", "content": marker}],
                tokenize=False)
        except Exception:  # a template that refuses this conversation marks no end
            return None
        tail = text.split(marker, 1)[1] if marker in text else ""
        return (tail.strip() or tail) or None

    def _request(self, body: ChatCompletionIn) -> GenerateIn:
        self.completions.check_model(body.model)
        refuse_unsupported({
            "n": body.n not in (None, 1), "logprobs": bool(body.logprobs),
            "tools": bool(body.tools),
            "response_format": (body.response_format or {}).get("type", "text") != "text",
            "presence_penalty": bool(body.presence_penalty),
            "frequency_penalty": bool(body.frequency_penalty)})
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        prompt = self.prompt(body)
        if self.turn_end is not None and self.turn_end not in stop:
            stop.append(self.turn_end)
        try:
            return GenerateIn(prompt=prompt,
                              max_new_tokens=body.max_completion_tokens or body.max_tokens
                              or self._room(prompt),
                              temperature=1.0 if body.temperature is None else body.temperature,
                              top_p=body.top_p or 1.0, seed=body.seed, stop=stop)
        except ValidationError as exc:
            raise ServiceError(422, "invalid_request", "the request does not fit the model's "
                               "limits", {"errors": [{"loc": list(e["loc"]), "msg": e["msg"]}
                                                     for e in exc.errors()]}) from exc

    def _room(self, prompt: str) -> int:
        """Without a token limit the reply may fill the context (up to the service's
        limit), as OpenAI's API lets it."""
        config = self.live.model.config
        context = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None)
        limit = self.live.settings.limits.max_new_tokens
        if context is None:
            return limit
        used = len(self.live.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        return max(1, min(limit, context - used))

    async def complete(self, body: ChatCompletionIn
                       ) -> ChatCompletionOut | AsyncIterator[dict]:
        """The assistant's reply, or (``stream``) OpenAI's chunks ending in ``[DONE]``."""
        stream = self.generation.token_stream(self._request(body), templated=True)
        out = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
               "model": self.completions.model_name}
        slots = self.generation.slots
        if body.stream:
            slots.check()
            return self._chunks(stream, out)
        slots.take()
        try:
            answer = await self.generation.run(stream)
        finally:
            slots.give()
        prompt_tokens, completion_tokens = (answer.usage.prompt_tokens,
                                            answer.usage.completion_tokens)
        return ChatCompletionOut(
            **out, system_fingerprint=f"v{answer.version}",
            choices=[ChatChoice(index=0, message=ChatMessageOut(content=answer.text),
                                finish_reason=answer.finish_reason,
                                edits_fired=answer.edits_fired)],
            usage=CompletionUsage(prompt_tokens=prompt_tokens,
                                  completion_tokens=completion_tokens,
                                  total_tokens=prompt_tokens + completion_tokens))

    async def _chunks(self, stream: TokenStream, out: dict[str, Any]) -> AsyncIterator[dict]:
        """A first chunk naming the assistant's role, a chunk per piece of text, a last one
        with the finish reason and the edits that acted, then ``[DONE]``."""
        version = self.live.ledger.version

        def chunk(delta: ChatDelta, **extra: Any) -> dict:
            body = ChatCompletionChunk(**out, system_fingerprint=f"v{version}",
                                       choices=[ChatChunkChoice(index=0, delta=delta, **extra)])
            return {"data": body.model_dump_json(exclude_none=True)}

        yield chunk(ChatDelta(role="assistant", content=""))
        async for piece in self.generation.stream(stream):
            if isinstance(piece, GenerateOut):
                version = piece.version
                yield chunk(ChatDelta(), finish_reason=piece.finish_reason,
                            edits_fired=piece.edits_fired)
            elif piece:
                yield chunk(ChatDelta(content=piece))
        yield {"data": "[DONE]"}
