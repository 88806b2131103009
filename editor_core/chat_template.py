"""Conversations as the model reads them: prompts written by the model's own chat template.

A chat question and an edit stated as a chat must reach the model as the same tokens, so
both go through ``chat_prompt``: the template's text for the conversation, ready for the
assistant's turn, written so that the tokenizer's ordinary encoding (which may prepend its
own BOS) gives exactly the template's tokens. ``turn_end`` is what the template writes
after an assistant's turn: where a reply ends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from transformers import PreTrainedTokenizerBase

from .data.records import EditCase, Probe

__all__ = ["ChatTemplateError", "case_in_chat", "chat_prompt", "chat_wordings",
           "has_chat_template", "turn_end", "wraps_turns"]

_MARKER = "\x00reply\x00"


class ChatTemplateError(ValueError):
    """The model has no chat template, or its template refused the messages."""


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer: PreTrainedTokenizerBase,
                messages: Sequence[Mapping[str, str]]) -> str:
    """The conversation as the template writes it, ending where the assistant's reply
    begins; without the template's leading BOS when the tokenizer prepends one itself."""
    if not has_chat_template(tokenizer):
        raise ChatTemplateError("this model's tokenizer ships no chat template")
    try:
        text = tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                             add_generation_prompt=True)
    except Exception as exc:  # the template's own checks (jinja2's TemplateError, ...)
        raise ChatTemplateError(f"the chat template refused the messages: {exc}") from exc
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and tokenizer("")["input_ids"][:1] == [
            tokenizer.bos_token_id]:
        text = text[len(bos):]
    return text


def turn_end(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """What the template writes after an assistant's turn ("<|im_end|>", a line end), or
    None where nothing marks it."""
    if not has_chat_template(tokenizer):
        return None
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "?"}, {"role": "assistant", "content": _MARKER}],
            tokenize=False)
    except Exception:  # a template that refuses this conversation marks no end
        return None
    tail = text.split(_MARKER, 1)[1] if _MARKER in text else ""
    return (tail.strip() or tail) or None


def chat_wordings(tokenizer: PreTrainedTokenizerBase, wordings: Sequence[str]
                  ) -> tuple[str, ...]:
    """Each question among ``wordings`` as a chat user's turn, written by the template:
    where a chat user asks it, which differs from the plain text when the template wraps
    turns in markers of its own. None for a model without a template, or whose template
    writes a question as the plain question. A chat form already among ``wordings`` (a
    prompt sent as messages) is not repeated."""
    if not has_chat_template(tokenizer):
        return ()
    out: list[str] = []
    for wording in wordings:
        if not wording.rstrip().endswith("?"):
            continue
        try:
            asked = chat_prompt(tokenizer, [{"role": "user", "content": wording}])
        except ChatTemplateError:
            return ()
        if asked.strip() != wording.strip() and asked not in out and asked not in wordings:
            out.append(asked)
    return tuple(out)


def wraps_turns(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the template writes a user's question as other text than the plain question
    (turn markers): then what a chat user asks reaches the model as different tokens."""
    return bool(chat_wordings(tokenizer, ["Is it?"]))


def case_in_chat(tokenizer: PreTrainedTokenizerBase, case: EditCase) -> EditCase:
    """``case`` with its prompt, rephrases and probes each asked as a chat user's turn: the
    routing of a chat model is calibrated on what chat users ask too."""
    def ask(text: str) -> str:
        return chat_prompt(tokenizer, [{"role": "user", "content": text}])

    def probes(block: Mapping[str, tuple[Probe, ...]]) -> dict[str, tuple[Probe, ...]]:
        return {kind: tuple(Probe(ask(p.prompt), p.answer) for p in ps)
                for kind, ps in block.items()}

    return dataclasses.replace(case, prompt=ask(case.prompt),
                               rephrases=tuple(map(ask, case.rephrases)),
                               locality=probes(case.locality),
                               portability=probes(case.portability))
