"""Test-time scaling: chain-of-thought answers with majority voting."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

__all__ = ["extract_answer", "majority_vote"]


def extract_answer(text: str, marker: str = "so") -> str | None:
    """The final answer of a chain of thought: the first word after the last `marker`
    (the whole text stripped when there is no marker); None when nothing follows."""
    words = text.split()
    if marker in words:
        i = len(words) - 1 - words[::-1].index(marker)
        return words[i + 1] if i + 1 < len(words) else None
    return text.strip() or None


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent non-None answer; ties go to the one seen first. None if none."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == top)
