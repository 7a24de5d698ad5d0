"""The report's synthetic-data steps, on iGSM, each kept only when a checker verifies it.

- Self-revision: a draft is critiqued (the checker names its first wrong step and why) and
  revised (its correct steps kept, the rest rewritten); the revision must check.
- Instruction reversal: from a response, write the instruction it answers (the question
  becomes the last parameter the response computes correctly); the response must check
  against the reversed problem, and the reversed problem's own solution must give the same
  answer (the report validates reversed instructions by regenerating from them).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from minirepro.tasks.igsm import Param, Problem, check_solution

__all__ = ["Revision", "reverse_instruction", "self_revise"]

_SYMBOL = re.compile(r"\bas (\w+) ;")


@dataclass(frozen=True)
class Revision:
    """A verified self-revision.

    Attributes:
        draft: The draft solution.
        critique: Which step is wrong and why (the checker's reason).
        revised: The revised solution (passes `check_solution`).
        kept_steps: Correct steps of the draft kept in the revision.
    """

    draft: str
    critique: str
    revised: str
    kept_steps: int


def _correct_steps(problem: Problem, text: str) -> tuple[list[tuple[Param, str, str]], object]:
    """The draft's passing steps before its first mistake: (param, symbol, text), and the
    check itself. [BACK] attempts are dropped."""
    check = check_solution(problem, text)
    steps = []
    for st in check.steps:
        if not st.ok or st.back or st.param is None:
            continue
        m = _SYMBOL.search(st.text)
        if m is None:  # cannot happen for a step that passed; skip rather than guess
            continue
        steps.append((st.param, m[1], st.text))
    return steps, check


def self_revise(problem: Problem, draft: str) -> Revision | None:
    """Critique and revise ``draft``; None when the draft is already correct or the
    revision fails the check.

    The revision keeps the draft's correct steps (with its own symbols) and writes the
    remaining needed parameters as the reference solution does, with fresh symbols where
    the draft's symbols are taken.
    """
    kept, check = _correct_steps(problem, draft)
    if check.correct:
        return None
    critique = f"step {check.failed_step + 1} is wrong: {check.reason}"
    done = {p for p, _, _ in kept}
    used = {s for _, s, _ in kept}
    symbols = {p: s for p, s, _ in kept}
    spare = (s for s in _fresh_symbols() if s not in used and s not in problem.symbols.values())
    for p in problem.needed:
        if p not in symbols:
            s = problem.symbols[p]
            symbols[p] = s if s not in used else next(spare)
            used.add(symbols[p])
    rewritten = dataclasses.replace(problem, symbols=symbols)
    rest = [rewritten.step_text(p) for p in problem.needed if p not in done]
    revised = " ".join([t for _, _, t in kept] + rest)
    if not check_solution(problem, revised).correct:
        return None
    return Revision(draft, critique, revised, len(kept))


def _fresh_symbols():
    for a in "abcdefghijklmnopqrstuvwxyz":
        yield a
    for a in "abcdefghijklmnopqrstuvwxyz":
        for b in "abcdefghijklmnopqrstuvwxyz":
            yield a + b


def reverse_instruction(problem: Problem, response: str) -> tuple[Problem, str] | None:
    """The instruction ``response`` answers: ``problem`` asking for the last parameter the
    response computes correctly, and the response cut to its correct steps.

    Returns None when the response computes nothing correctly, when that parameter is the
    question already (nothing to reverse), or when the verification fails.
    """
    kept, _ = _correct_steps(problem, response)
    if not kept:
        return None
    target = kept[-1][0]
    if target == problem.question:
        return None
    closure, todo = set(), [target]
    while todo:  # the target and everything it is computed from
        p = todo.pop()
        if p not in closure:
            closure.add(p)
            todo += problem.deps(p)
    symbols = {p: s for p, s, _ in kept}
    if not closure <= set(symbols):
        return None
    needed = tuple(p for p, _, _ in kept if p in closure)
    reversed_problem = dataclasses.replace(
        problem, question=target, needed=needed, symbols={p: symbols[p] for p in needed}
    )
    text = " ".join(t for p, _, t in kept if p in closure)
    check = check_solution(reversed_problem, text)
    if not check.correct or check.answer != reversed_problem.answer:
        return None
    if not check_solution(reversed_problem, reversed_problem.solution).correct:
        return None
    return reversed_problem, text
