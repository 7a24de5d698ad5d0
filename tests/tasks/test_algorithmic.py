"""Last-letter concatenation and word sorting: reference solutions, step checks,
corruptions, rationales, and the word list that ships in a wheel."""

import random

import pytest

from minirepro.tasks.algorithmic import (
    LastLetter,
    Problem,
    Solution,
    WordSort,
    get_task,
    load_words,
)

WORDS = ["apple", "bird", "cat", "dog", "eel", "fig", "goat", "hen", "ink", "jam", "kiwi"]


def test_reference_solutions():
    p = Problem(("cat", "dog", "bird"))
    ll, ws = LastLetter(WORDS), WordSort(WORDS)
    assert ll.solve(p).text == "cat : t | dog : g | bird : d" and ll.answer(p) == "t g d"
    assert ws.solve(p).text == "bird | cat | dog" and ws.answer(p) == "bird cat dog"
    for task in (ll, ws):
        assert task.check(p, task.solve(p)) == -1 and task.is_correct(p, task.solve(p).text)
        assert Solution.parse(task.solve(p).text) == task.solve(p)


def test_check_finds_the_first_wrong_or_missing_step():
    p = Problem(("cat", "dog", "bird"))
    ll = LastLetter(WORDS)
    assert ll.check(p, "cat : t | dog : o | bird : d") == 1
    assert ll.check(p, "cat : t | dog : g") == 2  # a missing step
    assert ll.check(p, "cat : t | dog : g | bird : d | bird : d") == 3
    assert not ll.is_correct(p, "cat : t | dog : g")
    assert WordSort(WORDS).check(p, "bird | dog | cat") == 1


@pytest.mark.parametrize("cls", [LastLetter, WordSort])
def test_corruptions_are_wrong_and_rationales_agree_with_labels(cls):
    task, rng = cls(WORDS), random.Random(0)
    kinds = set()
    for p in task.problems(200, (2, 5), seed=1):
        bad = task.corrupt(p, rng)
        assert not task.is_correct(p, bad) and task.check(p, bad) >= 0
        kinds.add(len(bad.steps) - len(p.words))
        for sol, label in ((task.solve(p), True), (bad, False)):
            text, verdict = task.rationale(p, sol)
            assert verdict == label and text.endswith("= +" if label else "= -")
            assert text.count("+") + text.count("-") == max(len(p.words), len(sol.steps)) + 1
    assert kinds >= {-1, 0, 1}  # skipped, edited/swapped and repeated steps all occur


def test_rationale_slips_flip_one_mark():
    task, rng = LastLetter(WORDS), random.Random(0)
    p = Problem(("cat", "dog", "bird"))
    clean, _ = task.rationale(p, task.solve(p))
    assert clean == "t + g + d + = +"
    slipped = [task.rationale(p, task.solve(p), rng, p_slip=1.0) for _ in range(50)]
    assert all(sum(a != b for a, b in zip(t, clean)) == 1 for t, _ in slipped)
    assert {v for _, v in slipped} == {True, False}  # a slip on the answer mark flips it


def test_train_short_test_long_and_determinism():
    task = LastLetter(WORDS)
    short, long = task.problems(50, (2, 3), seed=0), task.problems(50, (5, 6), seed=0)
    assert {len(p.words) for p in short} == {2, 3} and {len(p.words) for p in long} == {5, 6}
    assert task.problems(50, (2, 3), seed=0) == short


def test_word_list_ships_in_the_wheel():
    words = load_words()
    assert len(words) > 1000 and all(
        w.isalpha() and w.islower() and 3 <= len(w) <= 5 for w in words
    )
    assert {"house", "water", "cat"} <= set(words)


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="lowercase a-z"):
        LastLetter(["Cat", "dog"])
    with pytest.raises(ValueError, match="unknown task"):
        get_task("sudoku", WORDS)
    with pytest.raises(ValueError, match="n_words must"):
        LastLetter(WORDS).problems(3, (0, 2), seed=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_words(path=tmp_path / "none.txt")
    (tmp_path / "few.txt").write_text("cat dog\n")
    with pytest.raises(ValueError, match="only 2 words"):
        load_words(path=tmp_path / "few.txt")
