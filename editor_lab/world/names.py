"""Made-up names built from a small stock of syllables.

Names are assembled from shared parts on purpose: two people may share a first name or a
surname, two cities a stem. Such neighbours are what makes locality hard to keep, so the
world records which parts each name was built from.
"""

from __future__ import annotations

import random

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr",
           "kr", "st", "th", "sh", "gr", "pl", "tr", "vr")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou", "y")
_CODAS = ("", "", "", "n", "r", "l", "s", "th", "m", "x", "nd", "rk")


class NameForge:
    """Draws unique made-up words; no word is handed out twice across all kinds."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._used: set[str] = set()

    def syllable(self) -> str:
        r = self._rng
        return r.choice(_ONSETS) + r.choice(_VOWELS) + r.choice(_CODAS)

    def word(self, syllables: int, suffix: str = "") -> str:
        """A fresh capitalised word of ``syllables`` syllables (plus an optional suffix)."""
        while True:
            w = ("".join(self.syllable() for _ in range(syllables)) + suffix).capitalize()
            if w not in self._used and 4 <= len(w) <= 14:
                self._used.add(w)
                return w

    def pool(self, size: int, syllables: int, suffix: str = "") -> list[str]:
        return [self.word(syllables, suffix) for _ in range(size)]

    def reserve(self, word: str) -> bool:
        """Mark a composed word as used; False if it already was."""
        if word in self._used:
            return False
        self._used.add(word)
        return True
