"""The live stack: a model served with its edits, wired in one place.

What acts on a served model is always the same set of parts: the editor that computes
deltas, the ledger that keeps the active edits and combines them, and — when the
combination is the edit memory — the memory's routing of the model's forward passes and the
judge that tries each edit on the live memory before it is kept. The service, the lab's
service-view evaluations and the benchmarks all build it here, so each measures the stack
the service runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedModel

from .combination import RIDGE_REFRESH_EVERY, CombinationConfig
from .editor import Editor
from .gradient_editor import is_gradient_editor
from .ledger import WeightLedger
from .memory import EditMemory
from .refine import EditJudge, EditRefiner, RefineConfig
from .routing import MemoryRouting
from .routing_config import RoutingConfig

__all__ = ["LiveStack", "build_live_stack"]


@dataclass
class LiveStack:
    """The served model and what edits it (``routing`` and ``judge`` only under the edit
    memory; a merged combination rewrites the weights instead)."""

    model: PreTrainedModel
    editor: Editor
    ledger: WeightLedger
    routing: MemoryRouting | None = None
    judge: EditJudge | None = None

    @property
    def tokenizer(self):
        return self.editor.tokenizer

    @property
    def memory(self) -> EditMemory | None:
        return None if self.routing is None else self.routing.memory

    def close(self) -> None:
        """Take the routing hooks off the model (a stack built after this one on the same
        model must not route through this one's memory too)."""
        if self.routing is not None:
            self.routing.close()


def build_live_stack(editor: Editor, routing_config: RoutingConfig | None = None,
                     refine: RefineConfig | None = None, *,
                     combination: CombinationConfig | None = None,
                     model: PreTrainedModel | None = None,
                     ridge_refresh_every: int = RIDGE_REFRESH_EVERY) -> LiveStack:
    """The stack serving ``model`` (default: the editor's own) with edits combined by
    ``combination`` (default: the editor's). The edit memory needs ``routing_config``; with
    ``refine`` each edit is judged (and refined within its budget) on the live memory — an
    editor that transforms nothing has its step size searched first. A merged combination
    on another model (a comparison arm) combines the editor's deltas there; on the
    editor's own model, the editor computes its deltas for ``combination`` (routing keys
    for the memory, ridge inputs for ridge)."""
    combination = editor.combination if combination is None else combination
    model = editor.model if model is None else model
    if model is editor.model:
        editor.combination = combination  # it computes what its stack combines
    combiner = combination.combiner(editor.editable, ridge_refresh_every, routing_config)
    ledger = (WeightLedger.for_editor(editor, combiner) if model is editor.model
              else WeightLedger(model, editor.editable, combiner))
    if not combiner.routed:
        return LiveStack(model, editor, ledger)
    routing = MemoryRouting(combiner, model)
    judge = None if refine is None else EditJudge(
        EditRefiner(editor.edit_model, editor.tokenizer, editor.editable, editor.max_length,
                    refine), model, routing, search_step=is_gradient_editor(editor))
    return LiveStack(model, editor, ledger, routing, judge)
