"""Edits without a trained editor: MEND's editing gradient, untransformed.

A model no hypernetwork was trained for is still edited. An edit's change starts as the
gradient step itself: the layer inputs and output gradients of the edit's tokens, as the
low-rank factors a hypernetwork would transform (a hypernetwork with no blocks is the
identity, and has no weights of its own, so every process builds the same one). Its step
size is found on the spot (``EditRefiner.search_step``), then the factors are fitted until
the greedy answer is exactly the target, as refined edits are (``EditJudge``). The change
keeps the shape of any other edit's, so it is stored, replayed and rolled back alike.
"""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .combination import CombinationConfig
from .editor import Editor
from .hypernetwork import Hypernetwork, HypernetworkConfig
from .instructions import InstructionRegistry
from .specs import DEFAULT_LAST_BLOCKS, resolve_editable

__all__ = ["NO_EDITOR", "gradient_editor", "is_gradient_editor"]

NO_EDITOR = "none"  # the editor setting that asks for this mode


def gradient_editor(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *,
                    basis: str = "pristine", last_blocks: int = DEFAULT_LAST_BLOCKS
                    ) -> Editor:
    """An editor of ``model``'s last blocks' MLP weights that takes the plain, per-edit
    normalised gradient step (no instructions: nothing was trained to read them). Its
    edits are fitted on the edit memory, so they combine there."""
    editable = resolve_editable(model, None, last_blocks)
    hypernetwork = Hypernetwork(editable, HypernetworkConfig(n_blocks=0,
                                                             delta_scaling="per_edit"))
    hypernetwork.eval().to(next(model.parameters()).device)
    return Editor(model, tokenizer, hypernetwork, InstructionRegistry(),
                  use_instructions=False, basis=basis,
                  combination=CombinationConfig("memory"))


def is_gradient_editor(editor: Editor) -> bool:
    """Whether ``editor`` transforms nothing (its steps are found and fitted per edit)."""
    return editor.hypernetwork.cfg.n_blocks == 0
