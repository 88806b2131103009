"""What an answer is, and how an edited answer ends.

A reader takes a model's answer up to the end of its line (or of the sequence). An edit
*holds* when that line is exactly its target — a trailing period allowed — not when it
merely starts with it: " Argentinaaaa" is no answer anyone accepts. ``is_exact`` is that
definition, the one every judge, evaluator and benchmark of the project uses;
``starts_with_target`` is the looser prefix reading kept beside it.

A target alone says nothing about where the answer stops, so an edit fitted on its target
tokens only keeps pushing them (" Chile Chile Chile"). ``AnswerEndings`` closes the answer
the way the model closes its own: a period or not, then a line end or the end of the
sequence — whichever of those the pristine model finds likeliest after the target in that
context. The judge fits the target with that ending, and the edit memory lets an edit act
only while the answer being written is its target with one of those endings (the token
paths ``answer_paths`` gives), so the text after the answer is the model's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .encoding import IGNORE_INDEX, EncodedBatch, encode_batch, encode_pair
from .probing import TargetScore

__all__ = ["AnswerCheck", "AnswerEndings", "FittedAnswer", "answer_line", "is_exact",
           "starts_with_target"]


def answer_line(text: str) -> str:
    """The answer as a reader takes it: up to the end of its first line, trimmed."""
    return text.split("\n", 1)[0].strip()


def is_exact(text: str, target: str) -> bool:
    """Whether the answer's line is exactly ``target`` (a trailing period allowed)."""
    line, want = answer_line(text), target.strip()
    if not want:
        return False
    return line == want or line == want + "." or (want.endswith(".") and line == want[:-1])


def starts_with_target(text: str, target: str) -> bool:
    """The looser reading: the answer starts with ``target`` (shown beside exact)."""
    return bool(target.strip()) and text.strip().startswith(target.strip())


@dataclass(frozen=True)
class FittedAnswer:
    """A target as an edit is judged and fitted on it: the target, the text of its ending,
    then the end-of-sequence token when ``eos``."""

    target: str
    ending: str = ""
    eos: bool = False

    @property
    def text(self) -> str:
        return self.target + self.ending


@dataclass(frozen=True)
class AnswerCheck:
    """One prompt's answer, teacher-forced: the target's own tokens scored (``score``), and
    whether the greedy answer is exactly the target — every target token the argmax, then
    a line end, or a period and then a line end (``exact``)."""

    score: TargetScore
    exact: bool


class AnswerEndings:
    """The ways an answer may end for one tokenizer, and the choice among them."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.eos = tokenizer.eos_token_id
        # (text after the target, then the end of sequence?) — the line ends a reader sees
        self._endings = [(".\n", False), ("\n", False)]
        if self.eos is not None:
            self._endings += [(".", True), ("", True)]
        words = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in (" x", " x.")]
        # the token a period after a word is (None where it merges with the word)
        self.period = words[1][-1] if len(words[1]) == len(words[0]) + 1 else None
        newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
        # the token a line end is, alone (what an ending of "\n" is fitted with)
        self.ends_of_line = tuple(newline[-1:])
        ends = {ids[-1] for text in ("\n", ".\n", " \n")
                if (ids := tokenizer(text, add_special_tokens=False)["input_ids"])}
        if self.eos is not None:
            ends.add(self.eos)
        self.ends = tuple(sorted(ends))  # tokens that end a line or the sequence

    def candidates(self, target: str) -> list[FittedAnswer]:
        """The target with each ending (a target that ends in a period keeps only its own)."""
        target = target.rstrip()
        seen: list[FittedAnswer] = []
        for text, eos in self._endings:
            if target.endswith(".") and text.startswith("."):
                text = text[1:]
            answer = FittedAnswer(target, text, eos)
            if answer not in seen:
                seen.append(answer)
        return seen

    @torch.no_grad()
    def choose(self, model: PreTrainedModel, prompts: Sequence[str], target: str
               ) -> list[FittedAnswer]:
        """For each prompt, the ending the (pristine) ``model`` finds likeliest after the
        target. One teacher-forced row per prompt — the target, then a period — reads all
        four: the line end or end of sequence after the target, and after the period."""
        options = [o for o in self.candidates(target)
                   if self.period is not None or not o.ending.startswith(".")]
        period = not target.rstrip().endswith(".") and self.period is not None
        batch = encode_batch(self.tokenizer, list(prompts),
                             [target.rstrip() + ("." if period else "")] * len(prompts),
                             self.max_length)
        device = next(model.parameters()).device
        logits = model(input_ids=batch.input_ids.to(device),
                       attention_mask=batch.attention_mask.to(device),
                       use_cache=False).logits.float().cpu()
        logp = torch.log_softmax(logits, -1)
        newline = self.ends_of_line[0]
        out = []
        for row in range(len(prompts)):
            at = (batch.labels[row] != IGNORE_INDEX).nonzero().flatten().tolist()
            after = at[-1] - 1 if period else at[-1]  # where the token after the target
            scores = []                                # is predicted
            for option in options:
                where, score = after, 0.0
                if option.ending.startswith("."):
                    score += float(logp[row, where, self.period])
                    where += 1
                score += float(logp[row, where, self.eos if option.eos else newline])
                scores.append(score)
            out.append(options[max(range(len(options)), key=scores.__getitem__)])
        return out

    def encode(self, prompts: Sequence[str], answers: Sequence[FittedAnswer]
               ) -> tuple[EncodedBatch, list[int]]:
        """The batch of prompts with their fitted answers, and each row's count of target
        tokens (the rest of its labels are the ending)."""
        batch = encode_batch(self.tokenizer, list(prompts), [a.text for a in answers],
                             self.max_length, end_with_eos=[a.eos for a in answers])
        whole = (batch.labels != IGNORE_INDEX).sum(1).tolist()
        own = [sum(label != IGNORE_INDEX for label in
                   encode_pair(self.tokenizer, p, a.target, self.max_length)[1])
               for p, a in zip(prompts, answers)]
        return batch, [min(n, o) for n, o in zip(whole, own)]

    def check(self, logits: torch.Tensor, labels: torch.Tensor, targets: Sequence[int]
              ) -> list[AnswerCheck]:
        """Read each row of a teacher-forced pass (``logits`` [B, T, V] over ``labels``
        from ``encode``, ``targets`` its target token counts)."""
        logits, labels = logits[:, :-1].detach().float(), labels[:, 1:].to(logits.device)
        best = logits.argmax(-1)
        logp = torch.log_softmax(logits, -1).gather(
            -1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        ends, period = set(self.ends), self.period
        out = []
        for row, n in enumerate(targets):
            at = (labels[row] != IGNORE_INDEX).nonzero().flatten().tolist()
            target, ending = at[:n], at[n:]
            hits = [int(best[row, t]) == int(labels[row, t]) for t in target]
            score = TargetScore(float(logp[row, target].sum()), len(target),
                                sum(hits) / max(len(target), 1))
            exact = all(hits)
            if exact and ending:
                first = int(best[row, ending[0]])
                exact = first in ends or (
                    first == period == int(labels[row, ending[0]]) and len(ending) > 1
                    and int(best[row, ending[1]]) in ends)
            out.append(AnswerCheck(score, exact))
        return out

    def answer_paths(self, prompt: str, target: str) -> tuple[tuple[int, ...], ...]:
        """The token ids of every accepted answer (the target with each ending), as they
        follow ``prompt``: the paths along which the edit memory lets the edit act."""
        paths = []
        for option in self.candidates(target):
            ids, labels = encode_pair(self.tokenizer, prompt, option.text, self.max_length,
                                      end_with_eos=option.eos)
            path = tuple(t for t, label in zip(ids, labels) if label != IGNORE_INDEX)
            if path not in paths:
                paths.append(path)
        return tuple(paths)
