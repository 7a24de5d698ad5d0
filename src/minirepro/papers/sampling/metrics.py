"""Data-quality metrics of sampled solutions: coverage@k, diversity@k, false-positive rate.

For P problems with k samples each (the paper, §3):

- coverage@k: the share of problems with at least one sample whose *final answer* is right;
- diversity@k: the mean number of unique answer-correct solutions per problem;
- false-positive rate (FPR): of the answer-correct samples, the share whose reasoning is
  wrong. The paper estimates it with a judge model on 50 samples; on iGSM the step checker
  (`minirepro.tasks.igsm.check_solution`) makes it exact.

The generic functions take per-problem lists of `Judgement`s; `judge_igsm` makes them for
iGSM solutions, and `final_answer` reads the value a solution gives the question, right or
wrong, which is all that final-answer filtering (`filter_correct`) may look at.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from minirepro.tasks.igsm import Problem, check_solution, split_steps

__all__ = [
    "DataStats",
    "Judgement",
    "coverage",
    "data_stats",
    "diversity",
    "false_positive_rate",
    "filter_correct",
    "final_answer",
    "judge_igsm",
]


@dataclass(frozen=True)
class Judgement:
    """One sampled solution, judged.

    Attributes:
        text: The solution.
        answer_correct: Its final answer matches the reference answer.
        steps_correct: Every reasoning step is right (and it answers the question); None when
            unknown (no step checker for the task).
    """

    text: str
    answer_correct: bool
    steps_correct: bool | None = None

    def __post_init__(self) -> None:
        if self.steps_correct and not self.answer_correct:
            raise ValueError("a solution with every step correct must have the correct answer")


def _check(samples: Sequence[Sequence[Judgement]]) -> None:
    if isinstance(samples, Judgement) or not all(
        isinstance(s, Sequence) and all(isinstance(j, Judgement) for j in s) for s in samples
    ):
        raise TypeError("samples must be a list (per problem) of lists of Judgement")
    if not samples:
        raise ValueError("no problems")


def coverage(samples: Sequence[Sequence[Judgement]], k: int | None = None) -> float:
    """coverage@k: share of problems with >= 1 answer-correct sample among their first k.

    Args:
        samples: P lists of judged samples (all of them when ``k`` is None).
        k: Samples per problem to count.
    """
    _check(samples)
    return sum(any(j.answer_correct for j in s[:k]) for s in samples) / len(samples)


def _norm(text: str) -> str:
    return " ".join(text.split())


def diversity(samples: Sequence[Sequence[Judgement]], k: int | None = None) -> float:
    """diversity@k: mean number of unique answer-correct solutions per problem (whitespace
    normalised), among each problem's first k samples."""
    _check(samples)
    return sum(len({_norm(j.text) for j in s[:k] if j.answer_correct}) for s in samples) / len(
        samples
    )


def false_positive_rate(samples: Sequence[Sequence[Judgement]], k: int | None = None) -> float:
    """Share of answer-correct samples whose reasoning is wrong (NaN when none is correct).

    Raises:
        ValueError: A correct-answer sample has ``steps_correct=None`` (no checker).
    """
    _check(samples)
    right = [j for s in samples for j in s[:k] if j.answer_correct]
    if any(j.steps_correct is None for j in right):
        raise ValueError("the false-positive rate needs steps_correct on every correct sample")
    return sum(not j.steps_correct for j in right) / len(right) if right else float("nan")


def filter_correct(samples: Sequence[Sequence[Judgement]]) -> list[list[Judgement]]:
    """Final-answer filtering (the paper's data): keep the answer-correct samples; steps are
    not looked at, so false positives stay in, as in the paper."""
    _check(samples)
    return [[j for j in s if j.answer_correct] for s in samples]


@dataclass(frozen=True)
class DataStats:
    """The quality of one sampled dataset.

    Attributes:
        coverage: coverage@k.
        diversity: diversity@k.
        fpr: False-positive rate among answer-correct samples.
        accuracy: Share of all samples that are answer-correct.
        n_problems: P.
        n_samples: All samples.
        n_kept: Samples that pass final-answer filtering.
    """

    coverage: float
    diversity: float
    fpr: float
    accuracy: float
    n_problems: int
    n_samples: int
    n_kept: int


def data_stats(samples: Sequence[Sequence[Judgement]]) -> DataStats:
    """Coverage, diversity and FPR of ``samples`` (all of each problem's samples)."""
    _check(samples)
    n = sum(len(s) for s in samples)
    kept = sum(j.answer_correct for s in samples for j in s)
    return DataStats(
        coverage=coverage(samples),
        diversity=diversity(samples),
        fpr=false_positive_rate(samples),
        accuracy=kept / n if n else float("nan"),
        n_problems=len(samples),
        n_samples=n,
        n_kept=kept,
    )


def final_answer(problem: Problem, text: str) -> int | None:
    """The value ``text`` gives the question's parameter: the number ending the last step
    that defines it by name (``Define <question> as x; so x = ... = 5.``), whether or not the
    steps before are right; None if no step does.

    Args:
        problem: The iGSM problem.
        text: A solution as written (any spacing; a word tokenizer's decoding reads too).
    """
    name = split_steps(problem.name(problem.question))[0]
    answer = None
    for tokens in split_steps(text):
        if tokens[:1] != ["Define"] or "as" not in tokens:
            continue
        k = tokens.index("as")
        if (
            tokens[1:k] == name
            and len(tokens) > k + 2
            and tokens[-1] == "."
            and tokens[-2].isdigit()
        ):
            answer = int(tokens[-2])
    return answer


def judge_igsm(problem: Problem, texts: Sequence[str]) -> list[Judgement]:
    """Judge sampled solutions of one iGSM problem: the final answer against the problem's
    answer, and every step with the checker (exact false positives).

    Args:
        problem: The problem.
        texts: Its sampled solutions.
    """
    out = []
    for text in texts:
        right = final_answer(problem, text) == problem.answer
        out.append(Judgement(text, right, right and check_solution(problem, text).correct))
    return out
