"""Best-of-N picks the argmax with ties to the lowest index; with an oracle verifier it
equals coverage; self-consistency votes on final answers."""

import numpy as np
import pytest

from minirepro.papers.genrm import best_of_n, coverage, pass_at_1, pick_best, self_consistency


def test_pick_best_takes_the_argmax_and_breaks_ties_to_the_lowest_index():
    scores = np.array([[0.1, 0.9, 0.3], [0.5, 0.5, 0.5], [0.2, 0.7, 0.7]])
    assert pick_best(scores).tolist() == [1, 0, 1]
    # ties do not depend on the order the other samples come in
    assert pick_best(scores[:, ::-1]).tolist() == [1, 0, 0]


def test_best_of_n_hand_computed():
    scores = np.array([[0.9, 0.1, 0.2, 0.8], [0.3, 0.3, 0.6, 0.1]])
    correct = np.array([[False, True, True, False], [True, False, False, True]])
    # N=4: picks 0 (wrong) and 2 (wrong)
    assert best_of_n(scores, correct, 4) == 0.0
    # N=2, group {0,1}: picks 0 (wrong) and 0 (tie, right); group {2,3}: picks 3, 2 (wrong)
    assert best_of_n(scores, correct, 2) == pytest.approx(np.mean([1 / 2, 0 / 2]))
    assert best_of_n(scores, correct, 1) == pass_at_1(correct) == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [1, 4, 8, 32])
def test_oracle_best_of_n_equals_coverage(seed, n):
    rng = np.random.default_rng(seed)
    correct = rng.random((50, 32)) < rng.uniform(0.01, 0.3)
    oracle = correct.astype(float)
    assert best_of_n(oracle, correct, n) == pytest.approx(coverage(correct, n))
    # and no verifier beats the oracle
    assert best_of_n(rng.random(correct.shape), correct, n) <= coverage(correct, n) + 1e-12


def test_best_of_one_is_pass_at_1_whatever_the_scores():
    rng = np.random.default_rng(3)
    correct = rng.random((20, 8)) < 0.3
    assert best_of_n(rng.random(correct.shape), correct, 1) == pytest.approx(pass_at_1(correct))


def test_self_consistency_takes_the_majority_answer_ties_to_the_first():
    answers = [["a", "b", "b", "c"], ["x", "y", "y", "x"]]
    correct = np.array([[True, False, False, False], [True, False, False, True]])
    assert self_consistency(answers, correct, 4) == 0.5  # b wins row 0; x (first) wins row 1
    assert self_consistency(answers, correct, 1) == pass_at_1(correct)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: best_of_n(np.zeros((2, 4)), np.zeros((2, 4), bool), 5), "N must lie"),
        (lambda: best_of_n(np.zeros((2, 3)), np.zeros((2, 4), bool), 2), "differ in shape"),
        (lambda: coverage(np.zeros(4, bool), 1), "problems, samples"),
        (lambda: pick_best(np.array([[0.1, np.nan]])), "NaN"),
        (lambda: self_consistency([["a"]], np.zeros((1, 2), bool), 1), "answers and correct"),
    ],
)
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
