"""OpenAI-compatible chat completions on the live model.

The conversation becomes a prompt through the model's own chat template (shipped with its
tokenizer), so the answer is the one the model gives in a chat turn, with every active edit
acting on it; the reply ends where the template ends an assistant's turn, and starts at its
first visible character (a template that writes a space before the reply leaves it to the
model to write). A model without a chat template is refused (422 ``no_chat_template``: use
``/v1/completions``); so are parameters it cannot honour.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from editor_core.chat_template import ChatTemplateError, chat_prompt, has_chat_template, turn_end
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
    ChatMessage,
    ChatMessageOut,
    CompletionUsage,
    GenerateIn,
    GenerateOut,
)
from .completions import CompletionHandler, generation_request, refuse_unsupported
from .generation import GenerationHandler


class ChatHandler:
    """OpenAI's chat completions, answered by the generation handler."""

    def __init__(self, live: LiveService, generation: GenerationHandler,
                 completions: CompletionHandler) -> None:
        self.live = live
        self.generation = generation
        self.completions = completions

    @functools.cached_property
    def reply_end(self) -> str | None:
        """Where the template ends an assistant's turn (None: nothing marks it)."""
        return turn_end(self.live.tokenizer)

    def _request(self, body: ChatCompletionIn) -> GenerateIn:
        self.completions.check_model(body.model)
        refuse_unsupported({
            "n": body.n not in (None, 1), "logprobs": bool(body.logprobs),
            "tools": bool(body.tools),
            "response_format": (body.response_format or {}).get("type", "text") != "text",
            "presence_penalty": bool(body.presence_penalty),
            "frequency_penalty": bool(body.frequency_penalty)})
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        prompt = templated(self.live.tokenizer, body.messages, "plain text: /v1/completions")
        if self.reply_end is not None and self.reply_end not in stop:
            stop.append(self.reply_end)
        return generation_request(
            prompt=prompt, max_new_tokens=body.max_completion_tokens or body.max_tokens
            or self._room(prompt), temperature=body.temperature, top_p=body.top_p,
            seed=body.seed, stop=stop)

    def _room(self, prompt: str) -> int:
        """Without a token limit the reply may fill the context (up to the service's
        limit), as OpenAI's API lets it."""
        config = self.live.model.config
        context = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None)
        limit = self.live.settings.limits.max_new_tokens
        if context is None:
            return limit
        used = len(self.live.tokenizer(prompt)["input_ids"])
        return max(1, min(limit, context - used))

    async def complete(self, body: ChatCompletionIn
                       ) -> ChatCompletionOut | AsyncIterator[dict]:
        """The assistant's reply, or (``stream``) OpenAI's chunks ending in ``[DONE]``."""
        stream = self.generation.token_stream(self._request(body))
        out = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
               "model": self.completions.model_name}
        slots = self.generation.slots
        if body.stream:
            slots.check()
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return self._chunks(stream, out, usage)
        slots.take()
        try:
            answer = await self.generation.run(stream)
        finally:
            slots.give()
        return ChatCompletionOut(
            **out, system_fingerprint=f"v{answer.version}",
            choices=[ChatChoice(index=0, message=ChatMessageOut(content=answer.text.lstrip()),
                                finish_reason=answer.finish_reason,
                                edits_fired=answer.edits_fired)],
            usage=CompletionUsage.of([answer.usage]))

    async def _chunks(self, stream: TokenStream, out: dict[str, Any],
                      usage: bool) -> AsyncIterator[dict]:
        """A first chunk naming the assistant's role, a chunk per piece of text, a last one
        with the finish reason and the edits that acted, (``usage``) one with the token
        counts and no choice, then ``[DONE]``."""
        version = self.live.ledger.version

        def chunk(choices: list[ChatChunkChoice], **extra: Any) -> dict:
            body = ChatCompletionChunk(**out, system_fingerprint=f"v{version}",
                                       choices=choices, **extra)
            return {"data": body.model_dump_json(exclude_none=True)}

        yield chunk([ChatChunkChoice(index=0, delta=ChatDelta(role="assistant", content=""))])
        started = False  # the reply's leading whitespace (a template's space) is not shown
        async for piece in self.generation.stream(stream):
            if isinstance(piece, GenerateOut):
                version = piece.version
                yield chunk([ChatChunkChoice(index=0, delta=ChatDelta(),
                                             finish_reason=piece.finish_reason,
                                             edits_fired=piece.edits_fired)])
                if usage:
                    yield chunk([], usage=CompletionUsage.of([piece.usage]))
            elif piece and (started or piece.strip()):
                text, started = (piece if started else piece.lstrip()), True
                yield chunk([ChatChunkChoice(index=0, delta=ChatDelta(content=text))])
        yield {"data": "[DONE]"}


def templated(tokenizer, messages: list[ChatMessage], otherwise: str) -> str:
    """``messages`` as the model's chat template writes them; 422 ``no_chat_template`` or
    ``invalid_messages`` (with what to do ``otherwise``) when it cannot."""
    try:
        return chat_prompt(tokenizer, [{"role": m.role, "content": m.text} for m in messages])
    except ChatTemplateError as exc:
        code = "invalid_messages" if has_chat_template(tokenizer) else "no_chat_template"
        raise ServiceError(422, code, f"{exc} ({otherwise})") from exc
