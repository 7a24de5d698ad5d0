"""Verification training data: labelled (problem, solution) pairs with rationales.

Per problem: the reference solution (correct), ``n_corrupt`` realistic wrong ones
(`Task.corrupt`) and the generator's own samples, labelled by their final answer (the
paper labels the generator's solutions by final-answer correctness). Correct and incorrect
pairs are balanced by dropping the surplus at random (the paper always balances the
discriminative RM's data; every verifier here trains on the same pairs).

Each pair gets a step-by-step rationale (`Task.rationale`) with a chance ``p_slip`` of one
misjudged mark; a rationale whose verdict disagrees with the label is dropped from the CoT
set (the paper keeps synthetic rationales only when their verdict is right), so the kept
ones can still hold a wrong step judgement, as real rationales do.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from minirepro.papers.genrm.formats import Example, WordFormat
from minirepro.tasks.algorithmic import Problem, Task

__all__ = ["Labelled", "VerificationData", "verification_data"]


@dataclass(frozen=True)
class Labelled:
    """A solution with its label and rationale.

    Attributes:
        problem, solution: The pair (solution as text).
        correct: Final answer right.
        rationale: The step-by-step verification text.
        rationale_ok: The rationale's verdict equals ``correct``.
    """

    problem: Problem
    solution: str
    correct: bool
    rationale: str
    rationale_ok: bool


@dataclass
class VerificationData:
    """The balanced pairs and the examples each verifier trains on."""

    pairs: list[Labelled]
    direct: list[Example]
    cot: list[Example]
    correct_solutions: list[Example]


def verification_data(
    task: Task,
    fmt: WordFormat,
    problems: Sequence[Problem],
    samples: Sequence[Sequence[str]] | None,
    seed: int,
    n_corrupt: int = 1,
    p_slip: float = 0.1,
) -> VerificationData:
    """Build balanced verification data.

    Args:
        task: The task (labels, rationales, corruptions).
        fmt: The character format.
        problems: (P,) training problems.
        samples: (P, n) generator samples per problem, or None.
        seed: Corruptions, slips and balancing.
        n_corrupt: Programmatic wrong solutions per problem.
        p_slip: Chance of a misjudged mark per rationale.
    """
    if samples is not None and len(samples) != len(problems):
        raise ValueError(
            f"samples must have one list per problem ({len(problems)}), got {len(samples)}"
        )
    rng = random.Random(seed)
    raw: list[tuple[Problem, str]] = []
    for i, p in enumerate(problems):
        raw.append((p, task.solve(p).text))
        raw += [(p, task.corrupt(p, rng).text) for _ in range(n_corrupt)]
        raw += [(p, s) for s in (samples[i] if samples is not None else [])]
    pos = [(p, s) for p, s in raw if task.is_correct(p, s)]
    neg = [(p, s) for p, s in raw if not task.is_correct(p, s)]
    n = min(len(pos), len(neg))
    if n == 0:
        raise ValueError("no correct or no incorrect solutions to balance")
    chosen = [(p, s, True) for p, s in rng.sample(pos, n)] + [
        (p, s, False) for p, s in rng.sample(neg, n)
    ]
    rng.shuffle(chosen)
    pairs = []
    for p, s, label in chosen:
        text, verdict = task.rationale(p, s, rng, p_slip)
        pairs.append(Labelled(p, s, label, text, verdict == label))
    return VerificationData(
        pairs=pairs,
        direct=[fmt.direct_example(x.problem, x.solution, x.correct) for x in pairs],
        cot=[
            fmt.cot_example(x.problem, x.solution, x.rationale, x.correct)
            for x in pairs
            if x.rationale_ok
        ],
        correct_solutions=[fmt.solution_example(p, task.solve(p).text) for p in problems],
    )
