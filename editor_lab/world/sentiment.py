"""Reading the sentiment of an answer from the world's marker words."""

from __future__ import annotations

import re

from .templates import SENTIMENT_WORDS

_MARKERS = {
    sentiment: re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b")
    for sentiment, words in SENTIMENT_WORDS.items()
}


def sentiment_of(text: str) -> str | None:
    """The sentiment an answer expresses, read from its marker words (None if unclear)."""
    lowered = text.lower()
    hits = {s: len(pattern.findall(lowered)) for s, pattern in _MARKERS.items()}
    if hits["positive"] == hits["negative"]:
        return None
    return max(hits, key=hits.get)
