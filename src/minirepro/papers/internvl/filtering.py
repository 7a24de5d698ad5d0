"""Data filtering (InternVL 2.5, section 5.2): quality scoring, repetition detection,
heuristic rules.

The paper scores each sample with an LLM: quality 0-10 (drop below 7) and repetition 0-10
(drop below 3). Here no LLM judges; the stand-ins are stated:

- quality: a caller-supplied ``quality_fn(record) -> 0..10`` (the glyph task's checks the
  answer against the record's structure, `minirepro.tasks.glyphs.answer_quality`);
- repetition: 10 x the share of distinct n-grams of the answer (a looping answer scores
  near 0, a varied one 10);
- heuristics: an answer far longer than the median of its kind, or a line repeated.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["FilterConfig", "duplicate_lines", "filter_records", "repetition_score", "is_repetitive"]


def repetition_score(text: str, n: int = 2) -> float:
    """10 x distinct / total word n-grams; 10 for texts of fewer than 2n words."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    words = text.split()
    if len(words) < 2 * n:
        return 10.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 10.0 * len(set(grams)) / len(grams)


def duplicate_lines(text: str, times: int = 3) -> bool:
    """True when a non-empty line occurs at least `times` times."""
    counts = Counter(line.strip() for line in text.splitlines() if line.strip())
    return any(c >= times for c in counts.values())


def is_repetitive(text: str, min_score: float = 3.0, max_words: int | None = None) -> bool:
    """An output that loops: repetition score below `min_score`, a repeated line, or (when
    `max_words` is given) one that ran to the length limit."""
    too_long = max_words is not None and len(text.split()) >= max_words
    return repetition_score(text) < min_score or duplicate_lines(text) or too_long


@dataclass
class FilterConfig:
    """Thresholds: the paper's quality >= 7 and repetition >= 3 (of 10); an answer longer
    than `length_factor` x the median of its kind is abnormal."""

    min_quality: float = 7.0
    min_repetition: float = 3.0
    length_factor: float = 3.0


def filter_records(
    records: Sequence[dict],
    quality_fn: Callable[[dict], float] | None = None,
    cfg: FilterConfig | None = None,
) -> tuple[list[dict], dict[str, int]]:
    """Keep the records that pass every filter.

    Args:
        records: dicts with an ``answer`` string and optionally a ``kind`` (the question type
            the length rule groups by).
        quality_fn: the quality stand-in, record -> score in [0, 10]; None skips it.
        cfg: thresholds.
    Returns:
        (kept records, counts of records dropped by each filter: ``repetition``,
        ``length``, ``duplicate_lines``, ``quality``; the rules run first, then the scorer,
        and a record counts under the first filter that drops it).
    """
    cfg = cfg or FilterConfig()
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("answer"), str):
            raise ValueError(f"record {i} has no 'answer' string: {r!r:.80}")
    by_kind: dict[str, list[int]] = {}
    for r in records:
        by_kind.setdefault(r.get("kind", ""), []).append(len(r["answer"].split()))
    median = {k: statistics.median(v) for k, v in by_kind.items()}
    dropped = {"repetition": 0, "length": 0, "duplicate_lines": 0, "quality": 0}
    kept = []
    for r in records:
        answer = r["answer"]
        if repetition_score(answer) < cfg.min_repetition:
            dropped["repetition"] += 1
        elif len(answer.split()) > cfg.length_factor * max(1, median[r.get("kind", "")]):
            dropped["length"] += 1
        elif duplicate_lines(answer):
            dropped["duplicate_lines"] += 1
        elif quality_fn is not None and _quality(quality_fn, r) < cfg.min_quality:
            dropped["quality"] += 1
        else:
            kept.append(r)
    return kept, dropped


def _quality(quality_fn: Callable[[dict], float], record: dict) -> float:
    q = float(quality_fn(record))
    if not 0.0 <= q <= 10.0:
        raise ValueError(f"quality_fn must return a score in [0, 10], got {q}")
    return q
