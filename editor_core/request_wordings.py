"""The wordings the service adds to an edit request: one place, for the service and for
the evaluations that measure it.

An edit is keyed and fitted on more than the prompt a client sent: the relation's other
wordings for its subject (``RelationForms.derive``), and every question among them as a chat
user asks it (``chat_wordings``: for a model whose chat template wraps turns, a question in a
user's turn is other tokens than the plain question). Its *contrast* keys, the subject's
other relations, are added in both forms too: a same-subject question asked in chat must
meet a contrast key written as the model reads it, or the edit fires on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .chat_template import chat_wordings

if TYPE_CHECKING:
    from .editor import Editor

__all__ = ["RequestWordings", "request_wordings"]

RequestWordings = tuple[tuple[str, ...], tuple[str, ...]]


def request_wordings(editor: Editor, relation: str | None, subject: str | None,
                     sent: Sequence[str], keep: Callable[[str], bool] = lambda _: True
                     ) -> RequestWordings:
    """(derived wordings, contrast wordings) for an edit of ``relation`` about ``subject``
    sent as ``sent`` (the prompt and the rephrases), each with its chat forms; ``keep``
    drops a wording (one longer than a prompt may be)."""
    derived = editor.relation_forms.derive(relation, subject, sent)
    derived = (*derived, *chat_wordings(editor.tokenizer, [*sent, *derived]))
    contrast = editor.relation_forms.contrast(relation, subject)
    contrast = (*contrast, *chat_wordings(editor.tokenizer, contrast))
    return tuple(filter(keep, derived)), tuple(filter(keep, contrast))
