"""Computing an edit: instruction-wrapped input → editing gradient → hypernetwork → EditDelta.

One forward and one backward pass of the target NLL on the model as it stands. The layer
inputs u and output gradients δ of the editable weights are captured by hooks that exist
only for the duration of the call and only act in the calling thread, so nothing is left on
the modules and a concurrent generation in another thread neither disturbs nor is disturbed
by the capture. The graph starts at the input of the first edited block (a hook makes that
hidden state a leaf that requires grad), so no parameter flag is touched, the backward pass
stops there, and gradients are taken with ``torch.autograd.grad`` with respect to the layer
outputs: no model parameter ever receives ``.grad``.

The editing path runs in fp32: for a half-precision model the editor keeps an fp32 replica
(``edit_model``) that the ledger keeps in step with the served weights (``WeightLedger.
for_editor``); with ``fp32_replica=False`` it edits in the model's dtype instead (fp16 with
loss scaling), trading accuracy for memory.

The **edit basis** says which weights a new edit's gradient is taken on. ``"current"``: the
live weights, so an edit sees (and compensates for) the edits before it, and rolling one
back leaves later edits computed against it. ``"pristine"``: the unedited weights (the editor
keeps its own fp32 copy, which the ledger never touches), so edits are independent of each
other and of their order, and a rollback is exactly "as if it had never been made".
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .aliases import AliasFinder
from .answers import AnswerEndings
from .combination import CombinationConfig
from .data.records import EditCase
from .delta import EditDelta, RoutingKey, WeightFactors
from .encoding import EditInputError, EncodedBatch, encode_batch, label_nll, predicting_positions
from .head import OutputHead
from .hypernetwork import Hypernetwork
from .instructions import InstructionRegistry
from .relation_forms import RelationForms
from .routing_keys import routing_keys, subject_token_ids
from .specs import EditableWeight
from .workers import run_all

DEFAULT_MAX_LENGTH = 256
# fp16 gradients underflow easily; the editing loss is scaled up and δ scaled back down.
_FP16_LOSS_SCALE = 1024.0


@dataclass(frozen=True)
class EditRequest:
    """What a client asks for: make ``prompt`` (in task ``task``) continue with ``target``.

    ``subject`` names the entity (or, for ConvSent, the topic); ``sentiment`` is ConvSent's
    target opinion; ``description`` replaces the task's own instruction wording.
    ``rephrases`` and ``aliases`` (other names of the subject) give the edit memory more
    routing keys and subject spellings. ``derived`` are wordings the service derived from
    the relation's known forms (``relation_forms``): routing keys and rows of the fit, but
    never a reason to refuse the edit. ``contrast`` are other questions about the same
    subject (the other relations' wordings): the edit fires only where a query is closer to
    its own keys than to theirs. ``relation`` names the fact's relation (the catalogue's
    name), which tells what kind of entity the subject is.
    """

    task: str
    prompt: str
    target: str
    subject: str | None = None
    description: str | None = None
    sentiment: str | None = None
    rephrases: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    derived: tuple[str, ...] = ()
    contrast: tuple[str, ...] = ()
    relation: str | None = None

    @classmethod
    def from_record(cls, record: EditCase, description: str | None = None) -> EditRequest:
        """The request a data set's edit record stands for (training and evaluation)."""
        return cls(record.task, record.prompt, record.target_new, subject=record.subject,
                   description=description, sentiment=record.sentiment)


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
                 use_instructions: bool = True, max_length: int | None = None,
                 fp32_replica: bool = True,
                 combination: CombinationConfig | None = None,
                 basis: str = "current") -> None:
        if basis not in ("current", "pristine"):
            raise ValueError(f"unknown edit basis {basis!r}; use 'current' or 'pristine'")
        self.model = model
        self.combination = combination or CombinationConfig()
        self.basis = basis
        self.tokenizer = tokenizer
        self.hypernetwork = hypernetwork
        self.editable: list[EditableWeight] = hypernetwork.editable
        self.registry = registry or InstructionRegistry()
        self.use_instructions = use_instructions
        limit = getattr(model.config, "max_position_embeddings", None) or getattr(
            model.config, "n_positions", None) or DEFAULT_MAX_LENGTH
        self.max_length = min(max_length or limit, limit)
        model.eval()  # edits are computed without dropout, on the model as it serves
        dtype = next(model.parameters()).dtype
        if basis == "pristine" or (fp32_replica and dtype != torch.float32):
            self.edit_model = copy.deepcopy(model).float().eval().requires_grad_(False)
        else:
            self.edit_model = model
        modules = dict(self.edit_model.named_modules())
        self._modules = {w.name: modules[w.module_name] for w in self.editable}
        self._first_block = modules[_first_block_name(self.edit_model, self.editable)]
        self._dtype = next(self.edit_model.parameters()).dtype
        self._head = OutputHead.verified(self.edit_model)
        self.endings = AnswerEndings(tokenizer, self.max_length)
        self.relation_forms = RelationForms()  # the editor folder's catalogue, if it ships one
        # the names the model knows for an edit's subject (None: only the names sent)
        self.alias_finder: AliasFinder | None = AliasFinder(self)

    @property
    def follows_live_weights(self) -> bool:
        """Whether ``edit_model`` must carry the live edits (a current-basis replica)."""
        return self.basis == "current" and self.edit_model is not self.model

    # -- inputs ------------------------------------------------------------------------
    def edit_input(self, request: EditRequest, *, held_out: bool = False) -> str:
        """The text whose continuation is edited: the prompt wrapped in its instruction."""
        if not self.use_instructions:
            return request.prompt
        return self.registry.render(request.task, request.prompt, request.description,
                                    sentiment=request.sentiment, topic=request.subject,
                                    held_out=held_out)

    def encode(self, requests: Sequence[EditRequest], *, held_out: bool = False
               ) -> EncodedBatch:
        """Token ids and labels; an overlong input loses prompt tokens, never instruction."""
        if not requests:
            raise EditInputError("no edit requests given")
        for r in requests:
            if r.task not in self.registry:
                raise EditInputError(f"unknown task {r.task!r}; known tasks: "
                                     f"{self.registry.names}")
        texts = [self.edit_input(r, held_out=held_out) for r in requests]
        prefixes = [len(t) - len(r.prompt) for t, r in zip(texts, requests)]
        return encode_batch(self.tokenizer, texts, [r.target for r in requests],
                            self.max_length, prefixes)

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
    def _graph_from_first_block(self) -> Iterator[None]:
        """Make the first edited block's input hidden state a leaf that requires grad."""
        owner = threading.get_ident()

        def hook(module, args, kwargs):
            if threading.get_ident() != owner:
                return None
            if args and isinstance(args[0], torch.Tensor):
                return (args[0].detach().requires_grad_(), *args[1:]), kwargs
            if isinstance(kwargs.get("hidden_states"), torch.Tensor):
                return args, {**kwargs, "hidden_states":
                              kwargs["hidden_states"].detach().requires_grad_()}
            return None

        handle = self._first_block.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def _target_nll(self, input_ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                    kept: torch.Tensor) -> torch.Tensor:
        """Per-request NLL of the labels (which may run one token past ``input_ids``), with
        logits only at the predicting positions ``kept``: through the fused output head
        where verified, else the model's own forward."""
        if self._head is None:
            logits = self.edit_model(input_ids=input_ids, attention_mask=mask, use_cache=False,
                                     logits_to_keep=kept).logits
            return label_nll(logits, labels[:, kept + 1])
        hidden = self.edit_model.base_model(input_ids=input_ids, attention_mask=mask,
                                            use_cache=False).last_hidden_state
        return self._head.nll(hidden[:, kept], labels[:, kept + 1])

    def capture(self, batch: EncodedBatch) -> Captured:
        """Forward + backward of the summed per-request target NLL; u and δ per weight (fp32)."""
        device = next(self.edit_model.parameters()).device
        store: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # Tokens after the last predicting position feed nothing the loss reads (attention
        # looks back only): their u and δ rows would be dropped below, so they are not run.
        kept = predicting_positions(batch.labels)
        length = int(kept[-1]) + 1 if len(kept) else batch.input_ids.shape[1]
        input_ids = batch.input_ids[:, :length].to(device)
        mask = batch.attention_mask[:, :length].to(device)
        labels = batch.labels.to(device)
        kept = kept.to(device)
        scale = _FP16_LOSS_SCALE if self._dtype == torch.float16 else 1.0
        with torch.enable_grad(), self._graph_from_first_block(), self._capture_hooks(store):
            per_request = self._target_nll(input_ids, mask, labels, kept)
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

    @torch.no_grad()
    def ridge_inputs(self, requests: Sequence[EditRequest]) -> dict[str, tuple[torch.Tensor, ...]]:
        """Per editable weight, each request's layer inputs at every token of its plain
        prompt and target: where a joint combination asks the edit to act (fp32, CPU)."""
        batch = encode_batch(self.tokenizer, [r.prompt for r in requests],
                             [r.target for r in requests], self.max_length)
        device = next(self.edit_model.parameters()).device
        store: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        with self._capture_hooks(store):  # the inputs are wanted, not the logits
            inputs = {"input_ids": batch.input_ids.to(device),
                      "attention_mask": batch.attention_mask.to(device), "use_cache": False}
            if self._head is None:
                self.edit_model(**inputs, logits_to_keep=1)
            else:
                self.edit_model.base_model(**inputs)
        mask = batch.attention_mask.bool()
        return {name: tuple(store[name][0][i][mask[i].to(device)].float().cpu().contiguous()
                            for i in range(len(requests)))
                for name in self._modules}

    @property
    def gate(self) -> str:
        """The edit memory's gate: the first edited module in forward order."""
        names = {w.module_name for w in self.editable}
        return next(n for n, _ in self.edit_model.named_modules() if n in names)

    def request_routing_keys(self, requests: Sequence[EditRequest]) -> tuple[RoutingKey, ...]:
        """Each request's routing key for the edit memory, on the editing model (the
        pristine copy under the pristine basis): keys at the last token of the plain prompt
        and of each rephrase; token sequences of the subject and its aliases; the answer's
        accepted token paths (none for an opinion edit) and the line's end tokens."""
        prompts = [p for r in requests
                   for p in (r.prompt, *r.rephrases, *r.derived, *r.contrast)]
        keys = routing_keys(self.edit_model, self.tokenizer, self.gate, prompts)
        out, start = [], 0
        for r in requests:
            n = 1 + len(r.rephrases) + len(r.derived)
            c = len(r.contrast)
            names = (r.subject, *r.aliases) if r.subject else ()
            answers = () if r.sentiment else self.endings.answer_paths(r.prompt, r.target)
            out.append(RoutingKey(keys[start:start + n].contiguous(),
                                  subject_token_ids(self.tokenizer, names), answers,
                                  self.endings.ends,
                                  keys[start + n:start + n + c].contiguous() if c else None))
            start += n + c
        return tuple(out)

    # -- the edit ------------------------------------------------------------------------
    def transform(self, captured: Captured) -> dict[str, WeightFactors]:
        """Run the hypernetwork on captured rows (differentiable; the trainer uses this)."""
        per_edit = self.hypernetwork.cfg.delta_scaling == "per_edit"
        rows = {w.name: (captured.u[w.name],
                         _unit_per_span(captured.delta[w.name], captured.spans[w.name])
                         if per_edit else captured.delta[w.name]) for w in self.editable}
        transformed = self.hypernetwork.transform_many(rows)
        return {w.name: WeightFactors(*transformed[w.name], self.hypernetwork.step_size(w.name),
                                      captured.spans[w.name]) for w in self.editable}

    @torch.no_grad()
    def _finish(self, factors: dict[str, WeightFactors], n: int,
                ridge_inputs: dict[str, tuple[torch.Tensor, ...]] | None = None,
                routes: tuple[RoutingKey, ...] | None = None) -> EditDelta:
        return EditDelta({
            name: WeightFactors(f.u.detach().float().cpu().contiguous(),
                                f.d.detach().float().cpu().contiguous(), float(f.step),
                                f.spans)
            for name, f in factors.items()
        }, n, ridge_inputs, routes)

    def compute(self, requests: Sequence[EditRequest] | EditRequest) -> EditDelta:
        """The delta of one request or of a batch (rows attributable to each request), with
        its ridge inputs or routing keys when the editor's combination needs them."""
        if isinstance(requests, EditRequest):
            requests = [requests]
        batch = self.encode(requests)  # a refused input costs nothing further
        parts: list = [lambda: self.capture(batch)]
        if self.combination.needs_ridge_inputs:  # a pass beside the editing pass
            parts.append(lambda: self.ridge_inputs(requests))
        if self.combination.needs_routing:
            parts.append(lambda: self.request_routing_keys(requests))
        captured, *found = run_all(parts)
        ridge_inputs = found[0] if self.combination.needs_ridge_inputs else None
        routes = found[-1] if self.combination.needs_routing else None
        was_training = self.hypernetwork.training
        self.hypernetwork.eval()  # frozen normalisation statistics at inference
        try:
            with torch.no_grad():
                factors = self.transform(captured)
        finally:
            self.hypernetwork.train(was_training)
        return self._finish(factors, len(requests), ridge_inputs, routes)


def _unit_per_span(rows: torch.Tensor, spans: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """Each request's rows divided by their joint Frobenius norm."""
    scale = torch.ones(rows.shape[0], 1, dtype=rows.dtype, device=rows.device)
    for start, stop in spans:
        if stop > start:
            scale[start:stop] = 1 / rows[start:stop].norm().clamp(min=1e-12)
    return rows * scale


def _first_block_name(model: torch.nn.Module, editable: list[EditableWeight]) -> str:
    """The block holding the first editable weight in forward order (e.g. ``transformer.h.3``).

    A block is the deepest ancestor whose last name part is a layer index; without one, the
    first editable module itself.
    """
    targets = {w.module_name for w in editable}
    first = next(name for name, _ in model.named_modules() if name in targets)
    parts = first.split(".")
    for end in range(len(parts) - 1, 0, -1):
        if parts[end - 1].isdigit():
            return ".".join(parts[:end])
    return first
