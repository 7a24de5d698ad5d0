"""Best-of-N and the baselines it is compared with: pass@1, coverage, self-consistency.

A generator samples N solutions per problem; best-of-N keeps the one the verifier scores
highest (ties: the lowest index, so results never depend on sort stability) and reports the
fraction of problems whose pick is correct. From M >= N samples per problem, each metric at
N averages over the ``M // N`` disjoint groups of N consecutive samples (a lower-variance
estimate than one group). With an oracle verifier (score = correctness) best-of-N equals
coverage, the fraction of problems with at least one correct sample among N.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from minirepro.papers.processbench import majority_vote

__all__ = ["best_of_n", "coverage", "pass_at_1", "pick_best", "self_consistency"]


def _check(correct: np.ndarray, n: int) -> np.ndarray:
    correct = np.asarray(correct, dtype=bool)
    if correct.ndim != 2 or correct.shape[1] == 0:
        raise ValueError(f"correct must be (problems, samples), got shape {correct.shape}")
    if not 1 <= n <= correct.shape[1]:
        raise ValueError(f"N must lie in [1, {correct.shape[1]}] (the samples), got {n}")
    return correct


def pick_best(scores: np.ndarray) -> np.ndarray:
    """Index of the highest score per row, the lowest index among ties: (P,) from (P, N)."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"scores must be (problems, N), got shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return scores.argmax(1)  # numpy returns the first maximum


def _groups(m: int, n: int) -> list[slice]:
    return [slice(g * n, (g + 1) * n) for g in range(m // n)]


def best_of_n(scores: np.ndarray, correct: np.ndarray, n: int) -> float:
    """Best-of-N accuracy.

    Args:
        scores: (P, M) verifier scores of M samples per problem.
        correct: (P, M) whether each sample is correct.
        n: N <= M.
    """
    correct = _check(correct, n)
    scores = np.asarray(scores, dtype=float)
    if scores.shape != correct.shape:
        raise ValueError(f"scores {scores.shape} and correct {correct.shape} differ in shape")
    rows = np.arange(len(correct))
    accs = [
        correct[:, g][rows, pick_best(scores[:, g])].mean() for g in _groups(correct.shape[1], n)
    ]
    return float(np.mean(accs))


def coverage(correct: np.ndarray, n: int) -> float:
    """Fraction of problems with a correct sample among N (pass@N), over disjoint groups."""
    correct = _check(correct, n)
    return float(np.mean([correct[:, g].any(1).mean() for g in _groups(correct.shape[1], n)]))


def pass_at_1(correct: np.ndarray) -> float:
    """Mean correctness of single samples."""
    return float(_check(correct, 1).mean())


def self_consistency(answers: Sequence[Sequence[Hashable]], correct: np.ndarray, n: int) -> float:
    """Majority vote over the final answers of N samples (ties: the answer seen first).

    Args:
        answers: (P, M) final answers.
        correct: (P, M) correctness of each sample (equal answers are equally correct).
        n: N <= M.
    """
    correct = _check(correct, n)
    if len(answers) != len(correct) or any(len(a) != correct.shape[1] for a in answers):
        raise ValueError("answers and correct must both be (problems, samples)")
    accs = []
    for g in _groups(correct.shape[1], n):
        hits = []
        for a, c in zip(answers, correct):
            group = list(a[g])
            hits.append(bool(c[g][group.index(majority_vote(group))]))
        accs.append(np.mean(hits))
    return float(np.mean(accs))
