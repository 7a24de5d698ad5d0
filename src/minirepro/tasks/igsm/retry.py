"""Retry data: solutions with retracted wrong steps ("learning from mistakes", Part 2.2).

Before each correct step, with probability ``retry_rate``, a wrong step is inserted and
immediately retracted::

    Define Riverside Zoo's Animal as [BACK]. Define Riverside Zoo's Penguin Beach as q; ...

The wrong parameter is drawn, by ``kind``:

- "retry": a parameter of the problem that is not computable yet (some operand is not
  defined by an earlier step) and has not appeared in the solution so far. This needs the
  dependency graph; it is the paper's main construction.
- "retry_weak": a parameter that the solution defines later (not the current one). No
  dependency knowledge is needed: the paper's cheap "fake mistake".
- "retry_miss": a parameter the solution defines later that is not computable yet, i.e.
  an attempt that *misses* a step it needs. This is our reading of the paper's retry_miss
  (we could not consult its exact wording); see the retry paper's NOTES.md.

When no parameter qualifies (e.g. before the last step for "retry_weak"), nothing is
inserted. ``retry_rate == 0`` gives the error-free solution byte for byte. The solution comes
as `Segment`s so that the tokens of each wrong step (``Define <param> as``) can be left out
of the loss (the paper's label-masking ablation); the ``[BACK]`` token itself is learned.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from minirepro.tasks.igsm.checker import BACK
from minirepro.tasks.igsm.graph import Param
from minirepro.tasks.igsm.problem import Problem

__all__ = [
    "RETRY_KINDS",
    "RetryKind",
    "Segment",
    "encode_segments",
    "retry_segments",
    "retry_solution",
    "wrong_candidates",
]

RetryKind = Literal["retry", "retry_weak", "retry_miss"]
RETRY_KINDS: tuple[str, ...] = ("retry", "retry_weak", "retry_miss")


@dataclass(frozen=True)
class Segment:
    """A piece of solution text; ``error`` marks the tokens of a wrong step."""

    text: str
    error: bool = False


def wrong_candidates(
    problem: Problem, position: int, kind: RetryKind = "retry", used: Sequence[Param] = ()
) -> list[Param]:
    """Parameters a wrong step inserted before solution step ``position`` may name.

    Args:
        problem: The problem.
        position: Index into ``problem.needed`` of the correct step that follows.
        kind: "retry", "retry_weak" or "retry_miss" (see the module docstring).
        used: Parameters already named by wrong steps of this solution (excluded).

    Returns:
        The candidates, in a fixed order.
    """
    if kind not in RETRY_KINDS:
        raise ValueError(f"unknown retry kind {kind!r}; expected one of {RETRY_KINDS}")
    if not 0 <= position < len(problem.needed):
        raise ValueError(f"position {position} outside the {len(problem.needed)} steps")
    later = problem.needed[position + 1 :]
    if kind == "retry_weak":
        return [p for p in later if p not in used]
    defined = set(problem.needed[:position])
    pool = later if kind == "retry_miss" else problem.mentioned
    return [
        p
        for p in pool
        if p not in defined and p not in used and not set(problem.deps(p)) <= defined
    ]


def retry_segments(
    problem: Problem,
    retry_rate: float,
    rng: random.Random | int,
    kind: RetryKind = "retry",
) -> list[Segment]:
    """The solution with wrong, retracted steps inserted at ``retry_rate``.

    Args:
        problem: The problem.
        retry_rate: Probability of a wrong step before each correct step, in [0, 1].
        rng: A `random.Random`, or an int seed.
        kind: "retry", "retry_weak" or "retry_miss".

    Returns:
        Segments whose texts concatenate to the solution; wrong steps have ``error=True``
        (their ``[BACK].`` is a separate, unmarked segment).
    """
    if not 0.0 <= retry_rate <= 1.0:
        raise ValueError(f"retry_rate must be in [0, 1], got {retry_rate}")
    if kind not in RETRY_KINDS:
        raise ValueError(f"unknown retry kind {kind!r}; expected one of {RETRY_KINDS}")
    if not isinstance(rng, random.Random):
        rng = random.Random(f"retry:{rng}")
    out: list[Segment] = []
    used: list[Param] = []
    for i, step in enumerate(problem.steps):
        lead = " " if out else ""
        if retry_rate > 0 and rng.random() < retry_rate:
            cands = wrong_candidates(problem, i, kind, used)
            if cands:
                wrong = rng.choice(cands)
                used.append(wrong)
                out.append(Segment(f"{lead}Define {problem.name(wrong)} as", error=True))
                out.append(Segment(f" {BACK}."))
                lead = " "
        out.append(Segment(lead + step.text))
    return out


def retry_solution(
    problem: Problem, retry_rate: float, rng: random.Random | int, kind: RetryKind = "retry"
) -> str:
    """`retry_segments` joined into one string."""
    return "".join(s.text for s in retry_segments(problem, retry_rate, rng, kind))


def encode_segments(tokenizer, segments: Sequence[Segment]) -> tuple[list[int], list[bool]]:
    """Token ids of the segments and, per token, whether it belongs to a wrong step.

    Segments split at spaces, so for the core character and word tokenizers the ids equal
    ``tokenizer.encode("".join(texts))``.

    Args:
        tokenizer: A core `Tokenizer` (``[BACK]`` should be one of its specials).
        segments: From `retry_segments`.

    Returns:
        ``(ids, error)``, both of length S.
    """
    ids: list[int] = []
    error: list[bool] = []
    for seg in segments:
        part = tokenizer.encode(seg.text)
        ids.extend(part)
        error.extend([seg.error] * len(part))
    return ids, error
