"""Solutions with one known mistake, for testing checkers and building process-error data.

`corrupt_solution(problem, kind, rng)` returns the solution text with one error introduced
at a chosen step and the index of the first step a correct checker must reject:

- "value": the step's final value is off by one (mod p);
- "operand": a copied operand value is wrong (the second expression);
- "dependency": an operand is added that the parameter does not depend on;
- "order": a step is moved before a step it needs;
- "missing": a step that a later step needs is removed;
- "name": the step names a parameter the problem does not have.

`check_solution` rejects each at exactly that index (tested).
"""

from __future__ import annotations

import random
import re

from minirepro.tasks.igsm.expr import Node, render
from minirepro.tasks.igsm.problem import Problem

__all__ = ["CORRUPTIONS", "corrupt_solution"]

CORRUPTIONS = ("value", "operand", "dependency", "order", "missing", "name")


def corrupt_solution(
    problem: Problem, kind: str, rng: random.Random | int
) -> tuple[str, int] | None:
    """The solution with one ``kind`` of mistake and the index of the first wrong step.

    Args:
        problem: The problem.
        kind: One of `CORRUPTIONS`.
        rng: A `random.Random` or an int seed; picks the step.

    Returns:
        ``(text, first_wrong_step)``, or None when the problem has no step where this kind
        of mistake can be made (e.g. "order" in a solution whose steps are all independent).
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; expected one of {CORRUPTIONS}")
    if not isinstance(rng, random.Random):
        rng = random.Random(f"corrupt:{rng}")
    steps = [s.text for s in problem.steps]
    sites = _sites(problem, kind)
    if not sites:
        return None
    k = rng.choice(sites)
    s = problem.steps[k]
    if kind == "value":
        wrong = (s.value + rng.randint(1, problem.mod - 1)) % problem.mod
        steps[k] = re.sub(r"= \d+\.$", f"= {wrong}.", steps[k])
        return " ".join(steps), k
    if kind == "operand":
        parts = steps[k].split(" = ")  # "Define ... so q", E0, E1, ...
        bump = rng.randint(1, problem.mod - 1)
        parts[2] = re.sub(
            r"\d+", lambda m: str((int(m.group()) + bump) % problem.mod), parts[2], count=1
        )
        steps[k] = " = ".join(parts)
        return " ".join(steps), k
    if kind == "dependency":
        extra = rng.choice(
            [t.symbol for t in problem.steps[:k] if t.symbol not in _symbols(s.expr)]
        )
        e0 = render(s.expr)
        steps[k] = steps[k].replace(f"= {e0} =", f"= {e0} + {extra} =", 1)
        return " ".join(steps), k
    if kind == "order":
        j = min(
            j for j in range(k + 1, len(steps)) if s.param in problem.deps(problem.steps[j].param)
        )
        return " ".join(steps[:k] + [steps[j]] + steps[k:j] + steps[j + 1 :]), k
    if kind == "missing":
        j = min(
            j for j in range(k + 1, len(steps)) if s.param in problem.deps(problem.steps[j].param)
        )
        return " ".join(steps[:k] + steps[k + 1 :]), j - 1
    owner = problem.structure.items[s.param.layer][s.param.item]
    steps[k] = steps[k].replace(problem.name(s.param), f"{owner}'s Unicorn", 1)
    return " ".join(steps), k


def _symbols(e) -> set[str]:
    return set(re.findall(r"[A-Za-z_]\w*", render(e)))


def _sites(problem: Problem, kind: str) -> list[int]:
    steps = problem.steps
    if kind in ("value", "name"):
        return list(range(len(steps)))
    if kind == "operand":
        return [k for k, s in enumerate(steps) if len(s.text.split(" = ")) >= 4]
    if kind == "dependency":
        return [
            k
            for k, s in enumerate(steps)
            if isinstance(s.expr, Node)
            and s.expr.op == "+"
            and any(t.symbol not in _symbols(s.expr) for t in steps[:k])
        ]
    users = [  # steps with a later step that needs them
        k
        for k, s in enumerate(steps)
        if any(s.param in problem.deps(t.param) for t in steps[k + 1 :])
    ]
    return users
