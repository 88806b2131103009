"""Editing methods under evaluation, behind one interface: apply an edit, then restore.

Every method edits the same live model and must return it to its pristine weights exactly,
so that each evaluated edit starts from the same model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from editor_core.data.records import EditCase
from editor_core.editor import EditRequest, Editor
from editor_core.encoding import encode_batch, target_nll
from editor_core.ledger import WeightLedger
from editor_core.specs import EditableWeight


class EditMethod(Protocol):
    name: str

    def covers(self, task: str) -> bool: ...
    def apply(self, record: EditCase) -> None: ...
    def restore(self) -> None: ...


class _AnyTask:
    def covers(self, task: str) -> bool:
        return True


class HypernetworkMethod(_AnyTask):
    """A trained editor (InstructEdit, or MEND when it was trained without instructions).

    ``held_out_instruction`` wraps each edit in its task's held-out description instead of
    the first training one: the unseen-instruction test.
    """

    def __init__(self, name: str, editor: Editor, *, held_out_instruction: bool = False) -> None:
        self.name = name
        self.editor = editor
        self.ledger = WeightLedger.for_editor(editor)
        self.held_out_instruction = held_out_instruction
        self._count = 0

    def apply(self, record: EditCase) -> None:
        description = None
        if self.held_out_instruction and self.editor.use_instructions:
            description = self.editor.registry.get(record.task).held_out_description()
        delta = self.editor.compute(EditRequest.from_record(record, description)).compressed()
        self._count += 1
        self.ledger.apply(f"eval-{self._count}", delta)

    def restore(self) -> None:
        self.ledger.reset()


class PerTaskMethod:
    """One method per task under a single name: e.g. MEND trained separately on each task.

    It covers only the tasks it has a method for; the evaluator skips the others.
    """

    def __init__(self, name: str, methods: dict[str, EditMethod]) -> None:
        self.name = name
        self.methods = methods
        self._applied: list[EditMethod] = []

    def covers(self, task: str) -> bool:
        return task in self.methods

    def apply(self, record: EditCase) -> None:
        method = self.methods[record.task]
        method.apply(record)
        self._applied.append(method)

    def restore(self) -> None:
        for method in dict.fromkeys(self._applied):
            method.restore()
        self._applied.clear()


class FineTuneMethod(_AnyTask):
    """FT-L: a few Adam steps on the editable weights, minimising the target's NLL on the
    plain prompt (no locality term), as the usual fine-tuning baseline does."""

    name = "FT-L"

    def __init__(self, model, tokenizer, editable: list[EditableWeight], *, steps: int = 10,
                 lr: float = 5e-4, max_length: int = 256) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        params = dict(model.named_parameters())
        self._params = [params[w.name] for w in editable]
        self._pristine = [p.detach().clone() for p in self._params]
        self.steps = steps
        self.lr = lr
        self.max_length = max_length

    def apply(self, record: EditCase, rephrases: Sequence[str] = ()) -> None:
        """Fit the target on the prompt (and on ``rephrases``, where the request gives some)."""
        prompts = [record.prompt, *rephrases]
        batch = encode_batch(self.tokenizer, prompts, [record.target_new] * len(prompts),
                             self.max_length)
        flags = [p.requires_grad for p in self._params]
        for p in self._params:
            p.requires_grad_(True)
        optim = torch.optim.Adam(self._params, lr=self.lr)
        try:
            with torch.enable_grad():
                for _ in range(self.steps):
                    logits = self.model(input_ids=batch.input_ids,
                                        attention_mask=batch.attention_mask).logits
                    loss = target_nll(logits, batch.labels).mean()
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    optim.step()
        finally:
            for p, flag in zip(self._params, flags):
                p.grad = None
                p.requires_grad_(flag)

    @torch.no_grad()
    def restore(self) -> None:
        for p, original in zip(self._params, self._pristine):
            p.copy_(original)


class NoEditMethod(_AnyTask):
    """The unedited model: the floor every method's reliability is compared with."""

    name = "unedited"

    def apply(self, record: EditCase) -> None:
        pass

    def restore(self) -> None:
        pass
