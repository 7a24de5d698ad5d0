"""Scoring answers and margins against a `QAItem`.

- multi-hop / HotpotQA accuracy: an acceptable answer occurs in the reply (case, spacing and
  punctuation normalised) — the reply of an instruct model is a sentence, not a span;
- CWE: F1 between the set of list words named in the reply and the common words (words
  that are not in the list, such as "the", are ignored);
- margins: a segment is relevant when it holds an evidence sentence; precision and recall
  of the margins classified relevant against that.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from minirepro.papers.wim.segment import Segment
from minirepro.tasks.haystack import QAItem

__all__ = ["answer_score", "contains_answer", "cwe_f1", "gold_relevance", "precision_recall"]


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def contains_answer(reply: str, answers: Sequence[str]) -> bool:
    """True if any acceptable answer occurs in the reply as whole words."""
    r = f" {_norm(reply)} "
    return any(f" {_norm(a)} " in r for a in answers if _norm(a))


def cwe_f1(reply: str, item: QAItem) -> float:
    """F1 of the list words named in the reply against the item's common words."""
    vocab = set(item.meta.get("vocabulary", ()))
    named = {w for w in _norm(reply).split() if w in vocab}
    gold = {a.lower() for a in item.answers}
    hit = len(named & gold)
    if hit == 0:
        return 0.0
    p, r = hit / len(named), hit / len(gold)
    return 2 * p * r / (p + r)


def answer_score(reply: str, item: QAItem) -> float:
    """The item's metric: CWE F1, or 1.0 / 0.0 for an answer found / not found."""
    if item.kind == "cwe":
        return cwe_f1(reply, item)
    return float(contains_answer(reply, item.answers))


def gold_relevance(segments: Sequence[Segment], item: QAItem) -> list[bool]:
    """For each segment, whether it holds (a part of) an evidence sentence."""
    if not item.evidence:
        return [True] * len(segments)
    out = []
    for s in segments:
        text = _norm(s.text)
        out.append(any(_norm(e) in text or text in _norm(e) for e in item.evidence))
    return out


def precision_recall(predicted: Sequence[bool], gold: Sequence[bool]) -> tuple[float, float]:
    """Precision and recall of `predicted` relevance (NaN where undefined)."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predictions for {len(gold)} gold labels")
    tp = sum(p and g for p, g in zip(predicted, gold))
    n_pred, n_gold = sum(predicted), sum(gold)
    return (tp / n_pred if n_pred else math.nan, tp / n_gold if n_gold else math.nan)
