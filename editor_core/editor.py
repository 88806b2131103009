"""Computing an edit: instruction-wrapped input → editing gradient → hypernetwork → EditDelta.

One forward and one backward pass of the target NLL on the model as it stands. The layer
inputs u and output gradients δ of the editable weights are captured by forward hooks that
exist only for the duration of the call and only listen to the calling thread, so nothing is
left on the modules and a concurrent generation in another thread neither disturbs nor is
disturbed by the capture. Gradients are taken with ``torch.autograd.grad`` with respect to
the layer outputs, so no model parameter ever receives ``.grad``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .delta import EditDelta, WeightFactors
from .encoding import EditInputError, EncodedBatch, encode_batch, target_nll
from .hypernetwork import Hypernetwork
from .instructions import InstructionRegistry
from .specs import EditableWeight

DEFAULT_MAX_LENGTH = 256
# fp16 gradients underflow easily; the editing loss is scaled up and δ scaled back down.
_FP16_LOSS_SCALE = 1024.0


@dataclass(frozen=True)
class EditRequest:
    """What a client asks for: make ``prompt`` (in task ``task``) continue with ``target``.

    ``subject`` names the entity (or, for ConvSent, the topic); ``sentiment`` is ConvSent's
    target opinion; ``description`` replaces the task's own instruction wording.
    """

    task: str
    prompt: str
    target: str
    subject: str | None = None
    description: str | None = None
    sentiment: str | None = None


@dataclass(frozen=True)
class Captured:
    """Per editable weight, the kept rows of u and δ, and the row span of each request."""

    u: dict[str, torch.Tensor]
    delta: dict[str, torch.Tensor]
    spans: dict[str, tuple[tuple[int, int], ...]]
    loss: torch.Tensor  # per-request NLL before the edit


class Editor:
    """A model, its tokenizer, the editable weights and the trained hypernetwork."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 hypernetwork: Hypernetwork, registry: InstructionRegistry | None = None, *,
                 use_instructions: bool = True, max_length: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.hypernetwork = hypernetwork
        self.editable: list[EditableWeight] = hypernetwork.editable
        self.registry = registry or InstructionRegistry()
        self.use_instructions = use_instructions
        limit = getattr(model.config, "max_position_embeddings", None) or getattr(
            model.config, "n_positions", None) or DEFAULT_MAX_LENGTH
        self.max_length = min(max_length or limit, limit)
        modules = dict(model.named_modules())
        self._modules = {w.name: modules[w.module_name] for w in self.editable}
        self._params = dict(model.named_parameters())

    # -- inputs ------------------------------------------------------------------------
    def edit_input(self, request: EditRequest, *, held_out: bool = False) -> str:
        """The text whose continuation is edited: the prompt wrapped in its instruction."""
        if not self.use_instructions:
            return request.prompt
        return self.registry.render(request.task, request.prompt, request.description,
                                    sentiment=request.sentiment, topic=request.subject,
                                    held_out=held_out)

    def encode(self, requests: Sequence[EditRequest]) -> EncodedBatch:
        if not requests:
            raise EditInputError("no edit requests given")
        for r in requests:
            if r.task not in self.registry:
                raise EditInputError(f"unknown task {r.task!r}; known tasks: "
                                     f"{self.registry.names}")
        texts = [self.edit_input(r) for r in requests]
        return encode_batch(self.tokenizer, texts, [r.target for r in requests],
                            self.max_length)

    # -- the editing gradient -------------------------------------------------------------
    @contextmanager
    def _capture_hooks(self, store: dict[str, tuple[torch.Tensor, torch.Tensor]]
                       ) -> Iterator[None]:
        owner = threading.get_ident()
        handles = []

        def make_hook(name: str):
            def hook(module, args, output):
                if threading.get_ident() == owner:
                    store[name] = (args[0], output)
            return hook

        try:
            for name, module in self._modules.items():
                handles.append(module.register_forward_hook(make_hook(name)))
            yield
        finally:
            for h in handles:
                h.remove()

    @contextmanager
    def _editable_requires_grad(self) -> Iterator[None]:
        """Let the editable weights join the graph for this call, then restore the flags."""
        params = [self._params[w.name] for w in self.editable]
        before = [p.requires_grad for p in params]
        try:
            for p in params:
                p.requires_grad_(True)
            yield
        finally:
            for p, flag in zip(params, before):
                p.requires_grad_(flag)

    def capture(self, batch: EncodedBatch) -> Captured:
        """Forward + backward of the summed per-request target NLL; u and δ per weight (fp32)."""
        device = next(self.model.parameters()).device
        store: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        input_ids = batch.input_ids.to(device)
        mask = batch.attention_mask.to(device)
        labels = batch.labels.to(device)
        dtype = self._params[self.editable[0].name].dtype
        scale = _FP16_LOSS_SCALE if dtype == torch.float16 else 1.0
        with torch.enable_grad(), self._editable_requires_grad(), self._capture_hooks(store):
            logits = self.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
            per_request = target_nll(logits, labels)
            names = [w.name for w in self.editable]
            outputs = [store[n][1] for n in names]
            grads = torch.autograd.grad(per_request.sum() * scale, outputs, allow_unused=True)
        keep_pos = mask.bool()
        u_rows, d_rows, spans = {}, {}, {}
        for name, grad in zip(names, grads):
            u = store[name][0].detach().float()
            d = (torch.zeros_like(store[name][1]) if grad is None else grad).float() / scale
            if not torch.isfinite(d).all():
                raise FloatingPointError(f"non-finite editing gradient at {name}")
            # Keep real (non-padding) tokens whose u and δ are both non-zero, as MEND does.
            keep = keep_pos & (u != 0).any(-1) & (d != 0).any(-1)
            counts = keep.sum(1).tolist()
            starts = [sum(counts[:i]) for i in range(len(counts))]
            spans[name] = tuple((s, s + c) for s, c in zip(starts, counts))
            u_rows[name] = u[keep]
            d_rows[name] = d[keep]
        return Captured(u_rows, d_rows, spans, per_request.detach())

    # -- the edit ------------------------------------------------------------------------
    def transform(self, captured: Captured) -> dict[str, WeightFactors]:
        """Run the hypernetwork on captured rows (differentiable; the trainer uses this)."""
        factors = {}
        for w in self.editable:
            u_t, d_t = self.hypernetwork.transform(w.name, captured.u[w.name],
                                                   captured.delta[w.name])
            factors[w.name] = WeightFactors(u_t, d_t, self.hypernetwork.step_size(w.name),
                                            captured.spans[w.name])
        return factors

    @torch.no_grad()
    def _finish(self, factors: dict[str, WeightFactors], n: int) -> EditDelta:
        return EditDelta({
            name: WeightFactors(f.u.detach().float().cpu().contiguous(),
                                f.d.detach().float().cpu().contiguous(), float(f.step),
                                f.spans)
            for name, f in factors.items()
        }, n)

    def compute(self, requests: Sequence[EditRequest] | EditRequest) -> EditDelta:
        """The delta of one request or of a batch (rows attributable to each request)."""
        if isinstance(requests, EditRequest):
            requests = [requests]
        captured = self.capture(self.encode(requests))
        was_training = self.hypernetwork.training
        self.hypernetwork.eval()  # frozen normalisation statistics at inference
        try:
            with torch.no_grad():
                factors = self.transform(captured)
        finally:
            self.hypernetwork.train(was_training)
        return self._finish(factors, len(requests))
