"""The work behind each route: one handler object per group of routes.

Routes parse a request, call one handler method and shape the response; handlers are the
only code that touches the engine, the store, the ledger and the follower.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..lifecycle import LiveService
from .chat import ChatHandler
from .completions import CompletionHandler
from .edit_log import EditLogHandler
from .edits import EditHandler
from .generation import GenerationHandler, QuerySlots
from .system import SystemHandler

__all__ = ["ChatHandler", "CompletionHandler", "EditHandler", "EditLogHandler",
           "GenerationHandler", "Handlers", "QuerySlots", "SystemHandler"]


@dataclass(frozen=True)
class Handlers:
    """Every handler of one live service, built once it has started."""

    edits: EditHandler
    generation: GenerationHandler
    completions: CompletionHandler
    chat: ChatHandler
    system: SystemHandler
    edit_log: EditLogHandler

    @classmethod
    def build(cls, live: LiveService) -> Handlers:
        generation = GenerationHandler(
            live, QuerySlots(live.settings.limits.max_concurrent_generations))
        completions = CompletionHandler(live, generation)
        return cls(EditHandler(live), generation, completions,
                   ChatHandler(live, generation, completions), SystemHandler(live),
                   EditLogHandler(live))
