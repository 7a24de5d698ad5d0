"""The ProcessBench metric, the critic's answer parser, the vote and PRM thresholding."""

import math
import random

import numpy as np
import pytest

from minirepro.papers.processbench import (
    Record,
    choose_threshold,
    critic_prompt,
    f1_score,
    first_below,
    majority_vote,
    parse_answer,
    score,
    subset_score,
)


def _rec(rid: str, label: int, n_steps: int = 4) -> Record:
    return Record(rid, "p", tuple(f"s{i}" for i in range(n_steps)), label, label == -1)


def _reference_f1(labels, preds):
    """The reference run_eval.py's arithmetic (numpy, percent), transcribed."""
    match = [p == y for y, p in zip(labels, preds)]
    acc1 = np.mean([m for m, y in zip(match, labels) if y != -1]) * 100
    acc2 = np.mean([m for m, y in zip(match, labels) if y == -1]) * 100
    return acc1, acc2, 2 * acc1 * acc2 / (acc1 + acc2)


LABELS = [-1, -1, -1, 0, 2, 3, 1, -1, 2, 0]


def test_always_minus_one_gives_f1_zero():
    s = subset_score(LABELS, [-1] * len(LABELS))
    assert (s.acc_error, s.acc_correct, s.f1) == (0.0, 1.0, 0.0)


def test_perfect_predictor_gives_f1_one():
    s = subset_score(LABELS, list(LABELS))
    assert (s.acc_error, s.acc_correct, s.f1) == (1.0, 1.0, 1.0)


def test_mixed_case_by_hand():
    # error records (labels 0,2,3,1,2,0): right at 0 and 3 -> 2/6; correct records (4):
    # right 3 of 4 (one predicted 1, one None counts as wrong only on error side)
    preds = [-1, -1, 1, 0, None, 3, 2, -1, -1, 1]
    s = subset_score(LABELS, preds)
    assert s.n_error == 6 and s.n_correct == 4
    assert s.acc_error == pytest.approx(2 / 6)
    assert s.acc_correct == pytest.approx(3 / 4)
    assert s.f1 == pytest.approx(2 * (1 / 3) * 0.75 / (1 / 3 + 0.75))


def test_matches_reference_arithmetic_on_random_predictions():
    rng = random.Random(7)
    for _ in range(50):
        labels = [rng.randint(-1, 5) for _ in range(30)] + [-1, 0]
        preds = [rng.choice([None, *range(-1, 6)]) for _ in labels]
        a1, a2, f1 = _reference_f1(labels, preds)
        s = subset_score(labels, preds)
        assert 100 * s.acc_error == pytest.approx(a1)
        assert 100 * s.acc_correct == pytest.approx(a2)
        if a1 + a2 > 0:
            assert 100 * s.f1 == pytest.approx(f1)


def test_report_per_subset_and_average():
    recs = [_rec("gsm8k-0", -1), _rec("gsm8k-1", 2), _rec("math-0", -1), _rec("math-1", 1)]
    rep = score(recs, [-1, 2, -1, 0])
    assert list(rep.subsets) == ["gsm8k", "math"]
    assert rep.subsets["gsm8k"].f1 == 1.0 and rep.subsets["math"].f1 == 0.0
    assert rep.average_f1 == 0.5
    assert "average F1" in rep.table() and "gsm8k" in rep.table()


def test_edge_cases():
    assert f1_score(0.0, 0.0) == 0.0
    assert math.isnan(subset_score([-1, -1], [-1, -1]).f1)  # no error records: undefined
    with pytest.raises(ValueError, match="2 labels but 1 predictions"):
        subset_score([-1, 0], [-1])


# ----- parser ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "n_steps", "expected"),
    [
        ("The error is in paragraph 2. \\boxed{2}", 4, 2),
        ("All paragraphs are correct.\n\n\\boxed{-1}", 4, -1),
        ("First I thought \\boxed{1} but actually \\boxed{3}.", 4, 3),  # last box counts
        ("\\boxed{ 1 }", 4, 1),
        ("$\\boxed{0}$", 4, 0),
        ("\\boxed{\\text{2}}", 4, 2),
        ("boxed{2}", 4, 2),  # a missing backslash
        ("\\boxed{2.}", 4, 2),
        ("\\boxed{paragraph_3}", 4, 3),
        ("\\boxed{\u22121}", 4, -1),  # unicode minus
        ("The earliest error is in paragraph 2.", 4, None),  # prose, no box
        ("", 4, None),
        ("\\boxed{}", 4, None),
        ("\\boxed{2 or 3}", 4, None),  # not one integer
        ("\\boxed{x = 2}", 4, None),
        ("\\boxed{1.5}", 4, None),
        ("\\boxed{7}", 4, None),  # out of range
        ("\\boxed{-2}", 4, None),
        ("\\boxed{7}", None, 7),  # no range check without n_steps
        ("\\boxed{2", 4, None),  # unclosed
        ("\\boxed{\\frac{1}{2}}", 4, None),
    ],
)
def test_parse_answer(text, n_steps, expected):
    assert parse_answer(text, n_steps) == expected


def test_majority_vote():
    assert majority_vote([1, 2, 2, None, 1, 2]) == 2
    assert majority_vote([3, 1, 1, 3]) == 3  # tie: the first seen
    assert majority_vote([None, None]) is None
    assert majority_vote([-1]) == -1


def test_critic_prompt_tags_every_step():
    r = Record("x-0", "What is 1+1?", ("One plus one", "is 2."), -1, True)
    p = critic_prompt(r)
    assert (
        "<paragraph_0>\nOne plus one\n</paragraph_0>\n\n<paragraph_1>\nis 2.\n</paragraph_1>" in p
    )
    assert "What is 1+1?" in p and "\\boxed{}" in p
    with pytest.raises(ValueError, match="problem"):
        critic_prompt(r, "{foo}")


# ----- thresholds -----------------------------------------------------------------------------
def _brute_best_f1(scores, labels):
    grid = sorted({v for s in scores for v in s} | {2.0})
    best = 0.0
    for t in grid + [g + 1e-9 for g in grid]:
        preds = [first_below(s, t) for s in scores]
        best = max(best, subset_score(labels, preds).f1)
    return best


def test_first_below():
    assert first_below([0.9, 0.2, 0.1], 0.5) == 1
    assert first_below([0.9, 0.8], 0.5) == -1


def test_choose_threshold_reaches_the_best_f1():
    rng = random.Random(3)
    for _ in range(20):
        labels, scores = [], []
        for _ in range(25):
            n = rng.randint(1, 6)
            y = rng.choice([-1, rng.randrange(n)])
            labels.append(y)
            scores.append([round(rng.random(), 2) for _ in range(n)])
        t = choose_threshold(scores, labels)
        got = subset_score(labels, [first_below(s, t) for s in scores]).f1
        assert got == pytest.approx(_brute_best_f1(scores, labels))


def test_choose_threshold_separable_case():
    scores = [[0.9, 0.8, 0.95], [0.9, 0.1, 0.7], [0.85, 0.9], [0.2, 0.9]]
    labels = [-1, 1, -1, 0]
    t = choose_threshold(scores, labels)
    assert 0.2 < t <= 0.8
    assert [first_below(s, t) for s in scores] == labels
