"""The work behind each route: one handler object per group of routes.

Routes parse a request, call one handler method and shape the response; handlers are the
only code that touches the engine, the store, the ledger and the follower.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..lifecycle import LiveService
from .completions import CompletionHandler
from .edit_log import EditLogHandler
from .edits import EditHandler
from .generation import GenerationHandler, QuerySlots
from .system import SystemHandler

__all__ = ["CompletionHandler", "EditHandler", "EditLogHandler", "GenerationHandler", "Handlers", "QuerySlots",
           "SystemHandler"]


@dataclass(frozen=True)
class Handlers:
    """Every handler of one live service, built once it has started."""

    edits: EditHandler
    generation: GenerationHandler
    completions: CompletionHandler
    system: SystemHandler
    edit_log: EditLogHandler

    @classmethod
    def build(cls, live: LiveService) -> Handlers:
        generation = GenerationHandler(
            live, QuerySlots(live.settings.limits.max_concurrent_generations))
        return cls(EditHandler(live), generation, CompletionHandler(live, generation),
                   SystemHandler(live), EditLogHandler(live))
