"""The pristine model's answer beside the live one (``POST /generate`` with
``compare_pristine``): what the model said before any edit, and what the edits changed.

Under the edit memory the served weights are never rewritten: an edit acts only through
the memory's hooks, on the sequences a routing session sends it to. The pristine answer is
therefore the same model decoded in a worker thread whose routing reads an empty index
(``MemoryRouting.pristine``). That is thread-local, so concurrent generations and edits go
on untouched and nothing pauses. Merged combinations (ridge, sum) change the served weights
in place; answering as the pristine model would need a second copy of it in memory, so
there the option is refused (422 ``pristine_unavailable``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from editor_core.generation import TokenStream
from editor_core.routing import MemoryRouting

from ..errors import ServiceError
from ..lifecycle import LiveService
from ..schemas import GenerateIn, GenerateOut, PristineOut, Usage


def pristine_routing(live: LiveService, body: GenerateIn) -> MemoryRouting:
    """The edit memory's routing to bypass for ``body``'s pristine answer (422 where
    there is none)."""
    if body.stream:
        raise ServiceError(422, "invalid_request", "compare_pristine cannot be combined with "
                           "stream", {"fields": ["compare_pristine", "stream"]})
    if live.routing is None:
        kind = live.editor.combination.kind
        raise ServiceError(422, "pristine_unavailable", f"the {kind!r} combination merges "
                           "edits into the served weights, so no pristine model is at hand; "
                           "pristine answers need the edit memory (combination 'memory')",
                           {"combination": kind})
    return live.routing


async def with_pristine(live_answer: Awaitable[GenerateOut], routing: MemoryRouting,
                        stream: TokenStream) -> GenerateOut:
    """``live_answer`` with the pristine answer to ``stream`` beside it, both decoded at
    once (the pristine one in a worker thread, outside the live batches)."""
    def decode() -> None:
        with routing.pristine():
            stream.run()

    answer, _ = await asyncio.gather(live_answer, asyncio.to_thread(decode))
    pristine = PristineOut(text=stream.text, finish_reason=stream.finish_reason,
                           usage=Usage(prompt_tokens=stream.prompt_tokens,
                                       completion_tokens=stream.completion_tokens))
    return answer.model_copy(update={"pristine": pristine})
