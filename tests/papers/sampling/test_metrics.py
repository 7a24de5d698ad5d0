"""Coverage, diversity, FPR and final-answer filtering on hand-made sample sets, and the
iGSM judge against the step checker."""

from __future__ import annotations

import math

import pytest

from minirepro.papers.sampling import (
    Judgement,
    coverage,
    data_stats,
    diversity,
    false_positive_rate,
    filter_correct,
    final_answer,
    judge_igsm,
)
from minirepro.tasks.igsm import GenConfig, corrupt_solution, generate

J = Judgement


def hand_made() -> list[list[Judgement]]:
    # problem 0: two right answers, one by a wrong route, one the same text respaced
    # problem 1: nothing right; problem 2: one right (correct steps), one wrong
    return [
        [J("a b", True, True), J("a  b", True, True), J("c", True, False), J("d", False, False)],
        [J("x", False, False), J("y", False, False)],
        [J("p", True, True), J("q", False, False)],
    ]


def test_metrics_on_a_hand_made_set() -> None:
    s = hand_made()
    assert coverage(s) == pytest.approx(2 / 3)
    assert coverage(s, k=1) == pytest.approx(2 / 3)
    assert coverage([[J("d", False), J("e", True)]], k=1) == 0.0  # the right one is 2nd
    assert diversity(s) == pytest.approx((2 + 0 + 1) / 3)  # "a b" == "a  b" after spacing
    assert diversity(s, k=1) == pytest.approx(2 / 3)
    assert false_positive_rate(s) == pytest.approx(1 / 4)  # "c" of 4 answer-correct
    kept = filter_correct(s)
    assert [[j.text for j in p] for p in kept] == [["a b", "a  b", "c"], [], ["p"]]
    st = data_stats(s)
    assert (st.n_problems, st.n_samples, st.n_kept) == (3, 8, 4)
    assert st.accuracy == pytest.approx(0.5)
    assert math.isnan(false_positive_rate([[J("x", False, False)]]))


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="every step correct"):
        J("x", False, True)
    with pytest.raises(ValueError, match="steps_correct"):
        false_positive_rate([[J("x", True)]])
    with pytest.raises(TypeError, match="lists of Judgement"):
        coverage([["text"]])
    with pytest.raises(ValueError, match="no problems"):
        coverage([])


def test_igsm_judge_counts_false_positives_exactly() -> None:
    gen = GenConfig(min_op=2, max_op=4, max_edge=5, mod=7)
    problems = [generate(gen, 11, i) for i in range(12)]
    n_fp, judged = 0, []
    for i, p in enumerate(problems):
        # a correct solution, respaced as a word tokenizer decodes it
        spaced = p.solution.replace("'s", " ' s").replace(";", " ;").replace(".", " .")
        assert final_answer(p, spaced) == p.answer
        wrong, _ = corrupt_solution(p, "value", i)
        truncated = p.solution.rsplit("Define", 1)[0]  # stops before the question's step
        (good, corrupt, cut) = judge_igsm(p, [spaced, wrong, truncated])
        assert good.answer_correct and good.steps_correct
        assert cut == J(truncated, False, False) and final_answer(p, truncated) is None
        # a wrong intermediate value keeps the final answer right only by chance (mod 7)
        assert corrupt.steps_correct is False
        assert corrupt.answer_correct == (final_answer(p, wrong) == p.answer)
        n_fp += corrupt.answer_correct
        judged.append([good, corrupt])
    # a wrong value before the last step leaves the answer right: a false positive
    assert n_fp >= 3
    assert false_positive_rate(judged) == pytest.approx(n_fp / (len(problems) + n_fp))
    assert coverage(judged) == 1.0 and diversity(judged) == pytest.approx(1 + n_fp / 12)


def test_final_answer_reads_the_last_definition_of_the_question() -> None:
    p = generate(GenConfig(op=2, max_edge=4, mod=7), 3)
    q = p.name(p.question)
    other = (p.answer + 1) % 7
    assert final_answer(p, f"Define {q} as z; so z = {other}.") == other
    text = f"Define {q} as z; so z = {other}. Define {q} as y; so y = 2 + 3 = {p.answer}."
    assert final_answer(p, text) == p.answer
    assert final_answer(p, "garbage without steps") is None
