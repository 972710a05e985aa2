"""Comparing what Whisper heard with what was said.

Piper's delivery varies from run to run (its voice model samples noise), and Whisper
tiny.en, on one sentence in a few dozen, hears a word wrong ("quit" for "quick"). A
round trip therefore passes with at most ``allowed`` word errors (substitutions,
insertions, deletions), never with a different sentence; a broken pipeline (silence,
garbage, the wrong audio) misses by far more.
"""

from __future__ import annotations

import re

NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def words(text: str) -> list[str]:
    """Lower-case words; single digits spelled out (Whisper writes "9" for "nine")."""
    found = re.findall(r"[a-z0-9']+", text.lower())
    return [NUMBERS[int(w)] if w.isdigit() and len(w) == 1 else w for w in found]


def word_errors(heard: str, said: str) -> int:
    a, b = words(said), words(heard)
    row = list(range(len(b) + 1))
    for i, w in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, g in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (w != g))
    return row[-1]


def sounds_like(heard: str, said: str, allowed: int = 1) -> bool:
    return word_errors(heard, said) <= allowed
