"""Evaluate editing methods on edit records: every method, task and protocol by one code path.

For each record: measure the locality probes on the unedited model, apply the edit, measure
reliability (the edit prompt), generalization (its paraphrases: in the demo world's test
split, templates the editor never saw), portability (aliases, two-hop questions) and locality
(unchanged argmax on unrelated, neighbour and same-subject prompts), then restore the model.
Two protocols: ``plain`` queries, as a service user asks after an edit, and ``instruction``
queries wrapped like the edit input (the InstructEdit paper's protocol); locality prompts are
never wrapped. Each measure is reported teacher-forced (``*_tf``, KnowEdit's convention)
and as greedy exact match (``*_em``); for ConvSent, reliability and generalization are the
share of greedy answers carrying the new sentiment.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from editor_core.data.records import EditCase, Probe, SentimentJudge, carries_sentiment
from editor_core.instructions import InstructionRegistry
from editor_lab.decoding import greedy_continuations

from .methods import EditMethod
from .metrics import answer_argmax, exact_match, token_accuracy, unchanged_share

PROTOCOLS = ("plain", "instruction")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, standard error and count of per-record values."""
    n = len(values)
    mean = _mean(values)
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "se": math.sqrt(var / n), "n": n}


class Evaluator:
    def __init__(self, model, tokenizer, registry: InstructionRegistry | None = None,
                 *, max_length: int = 256, batch_size: int = 64,
                 sentiment_judge: SentimentJudge | None = None) -> None:
        """``sentiment_judge`` reads a ConvSent answer's sentiment; without one, answers are
        judged by each record's labelled answers."""
        self.model = model
        self.sentiment_judge = sentiment_judge
        self.tokenizer = tokenizer
        self.registry = registry or InstructionRegistry()
        self.max_length = max_length
        self.batch_size = batch_size

    def _wrapper(self, record: EditCase, protocol: str) -> Callable[[str], str]:
        if protocol == "plain":
            return lambda prompt: prompt
        return lambda prompt: self.registry.render(record.task, prompt,
                                                   sentiment=record.sentiment,
                                                   topic=record.subject)

    def _scores(self, probes: list[Probe]) -> tuple[float, float]:
        tf = token_accuracy(self.model, self.tokenizer, probes, self.max_length, self.batch_size)
        em = exact_match(self.model, self.tokenizer, probes, self.batch_size)
        return _mean(tf), _mean(em)

    def _sentiment_share(self, prompts: list[str], record: EditCase) -> float:
        answers = greedy_continuations(self.model, self.tokenizer, prompts, 24, self.batch_size)
        return _mean([float(carries_sentiment(a, record, self.sentiment_judge))
                      for a in answers])

    def measure(self, record: EditCase, method: EditMethod) -> dict[str, dict[str, float]]:
        """One record: {protocol: {metric: value}} with the method's edit applied."""
        locality = {cat: list(probes) for cat, probes in record.locality.items()}
        before = {cat: answer_argmax(self.model, self.tokenizer, probes, self.max_length,
                                     self.batch_size) for cat, probes in locality.items()}
        out: dict[str, dict[str, float]] = {}
        method.apply(record)
        try:
            loc = {f"locality/{cat}": _mean(unchanged_share(
                before[cat], answer_argmax(self.model, self.tokenizer, probes,
                                           self.max_length, self.batch_size)))
                   for cat, probes in locality.items()}
            for protocol in PROTOCOLS:
                wrap = self._wrapper(record, protocol)
                m: dict[str, float] = dict(loc)
                prompts = {"reliability": [record.prompt],
                           "generalization": list(record.rephrases)}
                for metric, ps in prompts.items():
                    if not ps:
                        continue
                    probes = [Probe(wrap(p), record.target_new) for p in ps]
                    m[f"{metric}_tf"], m[f"{metric}_em"] = self._scores(probes)
                    if record.task == "convsent" and record.sentiment:
                        m[f"{metric}_sentiment"] = self._sentiment_share(
                            [wrap(p) for p in ps], record)
                for cat, probes in record.portability.items():
                    wrapped = [Probe(wrap(p.prompt), p.answer) for p in probes]
                    m[f"portability/{cat}_tf"], m[f"portability/{cat}_em"] = self._scores(
                        wrapped)
                out[protocol] = m
        finally:
            method.restore()
        return out

    def evaluate(self, method: EditMethod, records: dict[str, list[EditCase]],
                 progress: bool = True) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
        """{task: {protocol: {metric: {mean, se, n}}}} over every record of every task."""
        result: dict = {}
        for task, recs in records.items():
            values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
            for record in tqdm(recs, desc=f"{method.name} / {task}", disable=not progress,
                               leave=False):
                for protocol, metrics in self.measure(record, method).items():
                    for name, value in metrics.items():
                        values[protocol][name].append(value)
            result[task] = {protocol: {name: summarize(v) for name, v in metrics.items()}
                            for protocol, metrics in values.items()}
        return result


HEADLINE = ("reliability_tf", "reliability_em", "generalization_tf", "generalization_em",
            "reliability_sentiment", "locality/Unrelated", "locality/Neighborhood",
            "locality/Relation_Specificity", "portability/Subject_Aliasing_tf")


def markdown_table(results: dict[str, dict]) -> str:
    """Method × task × protocol rows; headline metrics as mean ± standard error."""
    present = [m for m in HEADLINE if any(
        m in metrics for tasks in results.values() for protocols in tasks.values()
        for metrics in protocols.values())]
    lines = ["| method | task | protocol | " + " | ".join(present) + " |",
             "|---|---|---|" + "---|" * len(present)]
    for method, tasks in results.items():
        for task, protocols in tasks.items():
            for protocol, metrics in protocols.items():
                cells = [f"{metrics[m]['mean']:.3f} ± {metrics[m]['se']:.3f}" if m in metrics
                         else "" for m in present]
                lines.append(f"| {method} | {task} | {protocol} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
