"""The ProcessBench metric, computed as the reference's ``run_eval.py`` computes it.

For each subset: a prediction *matches* when it equals the label exactly (None, an
unparseable answer, never matches);

- ``acc_error``: the share of matches among records with an error (label != -1);
- ``acc_correct``: the share of matches among records without one (label == -1);
- ``f1 = 2 * acc_error * acc_correct / (acc_error + acc_correct)``, their harmonic mean.

The headline is the unweighted mean of the subsets' F1. We keep fractions in [0, 1]
(`SubsetScore.table` prints percent, as the paper does). Two edge cases the reference
leaves to numpy: a subset with no error (or no correct) records has NaN accuracy for that
side and NaN F1; when both accuracies are 0 we return F1 = 0 (the reference divides 0 by 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from minirepro.papers.processbench.records import Record

__all__ = ["Report", "SubsetScore", "f1_score", "score", "subset_score"]


def f1_score(acc_error: float, acc_correct: float) -> float:
    """Harmonic mean of the two accuracies; 0 when both are 0, NaN if either is NaN."""
    if math.isnan(acc_error) or math.isnan(acc_correct):
        return math.nan
    if acc_error + acc_correct == 0:
        return 0.0
    return 2 * acc_error * acc_correct / (acc_error + acc_correct)


@dataclass(frozen=True)
class SubsetScore:
    """The metric on one subset.

    Attributes:
        subset: Its name.
        n_error: Records with label != -1.
        n_correct: Records with label == -1.
        acc_error: Exact-match rate on the error records (NaN if there are none).
        acc_correct: Exact-match rate on the correct records (NaN if there are none).
        f1: Harmonic mean of the two.
    """

    subset: str
    n_error: int
    n_correct: int
    acc_error: float
    acc_correct: float
    f1: float

    def row(self) -> str:
        """One line in percent: subset, error acc, correct acc, F1 (like the reference)."""
        return (
            f"{self.subset:<16} {self.n_error:>5} {self.n_correct:>5} "
            f"{100 * self.acc_error:>9.1f} {100 * self.acc_correct:>9.1f} {100 * self.f1:>6.1f}"
        )


def subset_score(
    labels: Sequence[int], predictions: Sequence[int | None], subset: str = ""
) -> SubsetScore:
    """The metric on one subset from aligned labels and predictions.

    Args:
        labels: (N,) earliest wrong step per record, -1 for none.
        predictions: (N,) predicted index, -1, or None for no answer.
        subset: Name to carry in the result.
    """
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    err = [p == y for y, p in zip(labels, predictions) if y != -1]
    cor = [p == y for y, p in zip(labels, predictions) if y == -1]
    acc_e = sum(err) / len(err) if err else math.nan
    acc_c = sum(cor) / len(cor) if cor else math.nan
    return SubsetScore(subset, len(err), len(cor), acc_e, acc_c, f1_score(acc_e, acc_c))


@dataclass(frozen=True)
class Report:
    """The metric per subset and averaged.

    Attributes:
        subsets: Subset name -> score, in order of first appearance.
    """

    subsets: dict[str, SubsetScore]

    @property
    def average_f1(self) -> float:
        """Unweighted mean of the subsets' F1 (the paper's "Avg. F1")."""
        f1s = [s.f1 for s in self.subsets.values()]
        return sum(f1s) / len(f1s) if f1s else math.nan

    def table(self) -> str:
        """The per-subset table in percent, with the average F1 last."""
        head = f"{'subset':<16} {'n_err':>5} {'n_cor':>5} {'error acc':>9} {'correct acc':>9} {'F1':>6}"
        rows = [s.row() for s in self.subsets.values()]
        return "\n".join([head, *rows, f"{'average F1':<50}{100 * self.average_f1:>6.1f}"])

    def to_dict(self) -> dict:
        return {
            "subsets": {k: vars(v) for k, v in self.subsets.items()},
            "average_f1": self.average_f1,
        }


def score(records: Sequence[Record], predictions: Sequence[int | None]) -> Report:
    """The metric of ``predictions`` on ``records``, per subset (`Record.subset`).

    Args:
        records: (N,) records with labels.
        predictions: (N,) aligned predictions (int or None).
    """
    if len(records) != len(predictions):
        raise ValueError(f"{len(records)} records but {len(predictions)} predictions")
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(r.subset, []).append(i)
    return Report(
        {
            name: subset_score([records[i].label for i in idx], [predictions[i] for i in idx], name)
            for name, idx in groups.items()
        }
    )
