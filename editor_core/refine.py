"""Edits that take: check the hypernetwork's one-shot delta, and fit it further when needed.

The hypernetwork's single step is the right start — fast, and it generalises to paraphrases
— but it does not always reach an improbable target, and it never learnt where an answer
ends. Here an edit is judged as the edit memory serves it: its change acts from the last
token of the prompt on (where its routing key sits and where it fires), on the pristine
model, on the target followed by the ending the pristine model gives its own answers there
(``answers.AnswerEndings``). It *holds* when, teacher-forced, every one of those tokens is
the model's argmax — exactly when the greedy answer's line is the target and nothing more.

When it does not hold, the stored factors themselves are fitted (Adam, each tensor's step
relative to its own scale) on the prompt and the rephrases the request gives, with a KL term
that keeps the next-token distribution of locality prompts where the pristine model has it
should the change act there. Every forward pass sees the factors exactly as they will be
stored (rounded to the stored dtype, straight-through), so an edit judged to hold holds as
stored. The result keeps the one-shot delta's shape: the same low-rank factors, so it is
stored, replayed and rolled back like any other edit. The fit stops as soon as the edit
holds, or at its budget of steps — so whether an edit holds never depends on how busy the
machine is — or, as a guard only, at a time cap, and says which happened.

``EditJudge`` is what the service runs before storing an edit: a trial on the live edit
memory (the published entries plus the candidate, visible to the judging thread only), then
the fit when the trial fails, then a second trial.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .answers import AnswerCheck, AnswerEndings, FittedAnswer
from .delta import STORE_DTYPE, EditDelta, WeightFactors
from .editor import EditRequest
from .encoding import IGNORE_INDEX, label_nll, pad_prompts
from .knobs import check_bounds, knob
from .lowrank import low_rank_change
from .outcomes import Outcome
from .probing import TargetScore
from .routing import MemoryRouting
from .specs import EditableWeight

# The step sizes a plain gradient step is tried at: 1e-3 to 10, half a decade apart.
STEP_GRID = tuple(10 ** (k / 2) for k in range(-6, 3))

__all__ = ["STEP_GRID", "EditFit", "EditJudge", "EditRefiner", "Judgement", "Outcome",
           "RefineConfig"]


@dataclass(frozen=True)
class RefineConfig:
    """The budget and the fit of a refinement (``max_steps`` 0: judge, never refine).

    ``max_steps`` is the budget; ``max_ms`` only guards against a stalled machine (an edit
    stopped by it says so: ``EditFit.time_capped``). Each field's meaning and bounds are in
    its metadata, which the service's settings (``INSTRUCTEDIT_REFINE__*``) and the command
    line's ``--refine-*`` options are made from.
    """

    max_steps: int = knob(60, "refinement steps an edit that does not hold may take (0: "
                          "judge only, never refine)", ge=0)
    max_ms: float = knob(5000.0, "a guard only: refinement stops after this long (ms) even "
                         "within its steps (the edit then says refine_time_capped); the "
                         "budget is the steps, so whether an edit holds does not depend on "
                         "how busy the machine is", gt=0)
    lr: float = knob(0.5, "refinement's Adam step, relative to each factor tensor's scale "
                     "(RMS)", gt=0)
    locality_weight: float = knob(1.0, "weight of the KL term that keeps locality prompts' "
                                  "next-token distribution while refining", ge=0)
    strategy: Literal["adam", "scale"] = knob(
        "adam", "'adam' fits the factors; 'scale' only tries the one-shot change scaled by "
        "each of scales in turn (a forward pass each), the cheaper candidate it was "
        "measured against")
    scales: tuple[float, ...] = knob((1.5, 2.0, 3.0, 4.0, 6.0),
                                     "the scales the 'scale' strategy tries")
    # One that barely holds on its prompt tends to miss its paraphrases.
    confidence: float = knob(0.8, "an edit whose targets are the argmax but less likely than "
                             "this (teacher-forced) is refined up to it, within the budget: "
                             "it then holds on more paraphrases", ge=0, lt=1)

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.strategy not in ("adam", "scale") or any(m <= 0 for m in self.scales):
            raise ValueError(f"invalid refinement strategy: {self}")


@dataclass(frozen=True)
class EditFit:
    """The delta to store, whether it holds, and what it took."""

    delta: EditDelta
    outcome: Outcome
    steps: int
    ms: float
    time_capped: bool = False  # stopped by the time guard, not by holding or the step budget


class EditRefiner:
    """Judges and fits single edits on a pristine model (the editor's pristine copy)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 editable: Sequence[EditableWeight], max_length: int,
                 config: RefineConfig = RefineConfig()) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.config = config
        modules = dict(model.named_modules())
        self._modules = {w.name: modules[w.module_name] for w in editable}
        self.endings = AnswerEndings(tokenizer, max_length)

    def fit(self, delta: EditDelta, prompts: Sequence[str], answers: Sequence[FittedAnswer],
            locality: Sequence[str] = (), required: int | None = None) -> EditFit:
        """Judge ``delta`` (one request, in its stored form) on ``prompts`` (the plain
        prompt first, then rephrases, then derived wordings), each to be answered by its
        ``answers`` entry, and fit it when it does not hold. Only the first ``required``
        prompts (all by default) decide whether it holds; the fit goes on until all do."""
        required = len(prompts) if required is None else required
        began = time.perf_counter()
        cfg = self.config
        batch, own = self.endings.encode(prompts, answers)
        device = next(self.model.parameters()).device
        ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        labels = batch.labels.to(device)
        starts = (labels != IGNORE_INDEX).int().argmax(1) - 1  # the last prompt token
        away = self._locality_batch(locality, device)
        params = {name: (f.u.detach().float().clone().requires_grad_(True),
                         f.d.detach().float().clone().requires_grad_(True), float(f.step))
                  for name, f in delta.factors.items()}
        optimiser = torch.optim.Adam([
            {"params": [t], "lr": cfg.lr * float(t.detach().pow(2).mean().sqrt().clamp(
                min=1e-8))} for u, d, _ in params.values() for t in (u, d)])
        if cfg.strategy == "scale":
            return self._scaled(delta, ids, mask, labels, own, starts, began)
        steps, capped = 0, False
        while True:
            with torch.enable_grad():
                stored = {n: (_as_stored(u), _as_stored(d), s) for n, (u, d, s) in params.items()}
                with self._applied(stored, starts):
                    logits = self.model(input_ids=ids, attention_mask=mask,
                                        use_cache=False).logits
                checks = self.endings.check(logits, labels, own)
                exact = all(c.exact for c in checks[:required])
                sure = min(c.score.probability for c in checks[:required]) >= cfg.confidence
                capped = _ms(began) >= cfg.max_ms
                if (exact and sure and all(c.exact for c in checks[required:])
                        or steps >= cfg.max_steps or capped):
                    break
                nll = label_nll(logits[:, :-1], labels[:, 1:])
                loss = nll.mean()
                if away is not None and cfg.locality_weight > 0:
                    loss = loss + cfg.locality_weight * self._locality_kl(stored, *away)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                steps += 1
        outcome: Outcome = ("one_shot" if steps == 0 else "refined") if exact \
            else "did_not_hold"
        fitted = delta if steps == 0 else _with_factors(delta, params)
        return EditFit(fitted, outcome, steps, _ms(began),
                       capped and not exact and steps < cfg.max_steps)

    @torch.no_grad()
    def search_step(self, delta: EditDelta, prompts: Sequence[str],
                    answers: Sequence[FittedAnswer]) -> EditDelta:
        """``delta`` with every weight's step size the one of ``STEP_GRID`` under which
        ``prompts``' answers (target and ending, teacher-forced) are likeliest: an untrained
        editor's plain gradient step has no learnt size."""
        batch, _ = self.endings.encode(prompts, answers)
        device = next(self.model.parameters()).device
        ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        labels = batch.labels.to(device)
        starts = (labels != IGNORE_INDEX).int().argmax(1) - 1

        def nll(step: float) -> float:
            factors = {n: (f.u.float(), f.d.float(), step) for n, f in delta.factors.items()}
            with self._applied(factors, starts):
                logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            return float(label_nll(logits[:, :-1], labels[:, 1:]).mean())

        best = min(STEP_GRID, key=nll)
        return EditDelta({n: WeightFactors(f.u, f.d, best, f.spans)
                          for n, f in delta.factors.items()},
                         delta.n_requests, delta.ridge_inputs, delta.routes)

    @torch.no_grad()
    def _scaled(self, delta: EditDelta, ids: torch.Tensor, mask: torch.Tensor,
                labels: torch.Tensor, own: list[int], starts: torch.Tensor, began: float
                ) -> EditFit:
        """The first of ``scales`` (the one-shot change times it) that holds, if any."""
        steps, tried, exact = 0, delta, False
        capped = False
        for scale in (1.0, *self.config.scales):
            capped = _ms(began) >= self.config.max_ms
            if scale != 1.0 and (steps >= self.config.max_steps or capped):
                break
            steps += scale != 1.0  # each scaling tried is a step, the one that holds too
            tried = delta if scale == 1.0 else EditDelta(
                {n: WeightFactors(f.u, f.d, f.step * scale, f.spans)
                 for n, f in delta.factors.items()}, delta.n_requests, delta.ridge_inputs,
                delta.routes)
            factors = {n: (f.u.float(), f.d.float(), f.step) for n, f in tried.factors.items()}
            with self._applied(factors, starts):
                logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            checks = self.endings.check(logits, labels, own)
            exact = all(c.exact for c in checks)
            if exact:
                break
        outcome: Outcome = ("one_shot" if tried is delta else "refined") if exact \
            else "did_not_hold"
        return EditFit(tried, outcome, steps, _ms(began), capped and not exact)

    # -- the change as the memory applies it, differentiably ------------------------------
    @contextmanager
    def _applied(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]],
                 starts: torch.Tensor) -> Iterator[None]:
        """The change acts at each row's positions from ``starts[row]`` on."""
        handles = []
        for name, module in self._modules.items():
            u, d, step = factors[name]

            def hook(m: nn.Module, args, output, u=u, d=d, step=step):
                x = args[0]
                on = (torch.arange(x.shape[1], device=x.device)[None, :]
                      >= starts[:, None]).to(x.dtype).unsqueeze(-1)
                return output - low_rank_change(x, u, d, step) * on

            handles.append(module.register_forward_hook(hook))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _locality_batch(self, prompts: Sequence[str], device
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor
                                   ] | None:
        """Locality prompts (right-padded), their last positions, and the pristine model's
        log-probabilities of the next token there."""
        if not prompts:
            return None
        batch = pad_prompts(self.tokenizer, prompts, device, self.max_length)
        ids, mask, last = batch.input_ids, batch.attention_mask, batch.last
        with torch.no_grad():
            logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        rows = torch.arange(len(prompts), device=device)
        return ids, mask, last, torch.log_softmax(logits[rows, last].float(), -1)

    def _locality_kl(self, factors, ids: torch.Tensor, mask: torch.Tensor, last: torch.Tensor,
                     pristine: torch.Tensor) -> torch.Tensor:
        """KL(pristine ‖ edited) of the next token, should the change fire at the end."""
        with self._applied(factors, last):
            logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        rows = torch.arange(ids.shape[0], device=ids.device)
        edited = torch.log_softmax(logits[rows, last].float(), -1)
        return (pristine.exp() * (pristine - edited)).sum(-1).mean()


def _as_stored(t: torch.Tensor) -> torch.Tensor:
    """``t`` as the store keeps it, with the gradient passed straight through."""
    return t + (t.detach().to(STORE_DTYPE).float() - t.detach())


def _with_factors(delta: EditDelta, params) -> EditDelta:
    """``delta`` with fitted factors, in the stored dtype; keys and routing unchanged."""
    return EditDelta({
        name: WeightFactors(u.detach().to(STORE_DTYPE).contiguous(),
                            d.detach().to(STORE_DTYPE).contiguous(), step, f.spans)
        for (name, f), (u, d, step) in zip(delta.factors.items(), params.values())
    }, delta.n_requests, delta.ridge_inputs, delta.routes)


@dataclass(frozen=True)
class Judgement:
    """What the live model would answer with an edit, before it is stored: the delta to
    store, whether its greedy answers are exactly the target, and what refining took."""

    delta: EditDelta
    outcome: Outcome
    steps: int
    ms: float
    scores: tuple[TargetScore, ...]  # the prompt's, then each rephrase's, with the edit
    answers: tuple[FittedAnswer, ...] = ()  # what each prompt was judged on
    time_capped: bool = False  # refinement stopped by the time guard

    @property
    def holds(self) -> bool:
        return self.outcome != "did_not_hold"


# Sorts before every stored id, so a trial entry wins a routing tie with an entry it is
# about to supersede (the same prompt's key).
_TRIAL_ID = "\x00trial"


class EditJudge:
    """Decides on the spot whether an edit holds on the live edit memory, refining it when
    it does not. The trial routes teacher-forced passes through the published memory plus
    the candidate entry; routing is causal and per position, so every token of the target
    and its ending being the argmax there is exactly a greedy answer whose line is the
    target. The ending of each prompt's answer is the pristine model's choice."""

    def __init__(self, refiner: EditRefiner, model: PreTrainedModel, routing: MemoryRouting,
                 *, search_step: bool = False) -> None:
        self.refiner = refiner
        self.model = model
        self.routing = routing
        self.endings = refiner.endings
        self.search_step = search_step  # an untrained editor's deltas: find the step first

    def judge(self, request: EditRequest, delta: EditDelta, locality: Sequence[str] = ()
              ) -> Judgement:
        judgement = self._judge(request, delta, locality)
        if self.search_step and judgement.holds:
            return dataclasses.replace(judgement, outcome="fitted")
        return judgement

    def _judge(self, request: EditRequest, delta: EditDelta, locality: Sequence[str]
               ) -> Judgement:
        began = time.perf_counter()
        required = [request.prompt, *request.rephrases]
        prompts = [*required, *request.derived]
        n = len(required)
        answers = self._endings(prompts, n, request.target)
        if self.search_step:
            delta = self.refiner.search_step(delta, prompts[:n], answers[:n])
        checks = self._trial(delta, prompts, answers)
        scores = tuple(c.score for c in checks[:n])
        held = all(c.exact for c in checks[:n])
        if held and all(c.exact for c in checks[n:]) and min(
                s.probability for s in scores) >= self.refiner.config.confidence:
            return Judgement(delta, "one_shot", 0, _ms(began), scores, answers[:n])
        fit = self.refiner.fit(delta, prompts, answers, locality, required=n)
        if not fit.steps:  # no budget to refine: the one-shot delta as it is
            return Judgement(delta, "one_shot" if held else "did_not_hold", 0, _ms(began),
                             scores, answers[:n], fit.time_capped)
        checks = self._trial(fit.delta, required, answers[:n])
        outcome: Outcome = "refined" if all(c.exact for c in checks) else "did_not_hold"
        return Judgement(fit.delta, outcome, fit.steps, _ms(began),
                         tuple(c.score for c in checks), answers[:n], fit.time_capped)

    def _endings(self, prompts: list[str], required: int, target: str
                 ) -> tuple[FittedAnswer, ...]:
        """Each prompt's fitted answer: chosen for every required prompt and for the first
        derived wording of each form (statement, question); the other derived wordings
        take their form's choice."""
        form = [p.rstrip().endswith("?") for p in prompts]
        asked = [i for i in range(len(prompts))
                 if i < required or form[i] not in form[:i]]
        chosen = dict(zip(asked, self.endings.choose(self.refiner.model,
                                                     [prompts[i] for i in asked], target)))
        by_form = {form[i]: a for i, a in reversed(list(chosen.items()))}
        return tuple(chosen.get(i, by_form.get(form[i])) for i in range(len(prompts)))

    @torch.no_grad()
    def _trial(self, delta: EditDelta, prompts: list[str], answers: Sequence[FittedAnswer]
               ) -> list[AnswerCheck]:
        batch, own = self.endings.encode(prompts, answers)
        device = next(self.model.parameters()).device
        with self.routing.trial([self.routing.memory.entry(_TRIAL_ID, delta)]):
            logits = self.model(input_ids=batch.input_ids.to(device),
                                attention_mask=batch.attention_mask.to(device),
                                use_cache=False).logits
        return self.endings.check(logits, batch.labels, own)


def _ms(began: float) -> float:
    return (time.perf_counter() - began) * 1e3
