"""Parse a written solution and check every step against its problem.

A solution is a sequence of steps ``Define <name> as <sym>; so <sym> = E0 = E1 = ... = v.``
or retracted attempts ``Define <name> as [BACK].`` (retry data). `check_solution` accepts
the first form when

- ``<name>`` is a parameter of the problem, not defined by an earlier step, and ``<sym>`` is
  a fresh symbol, repeated after "so";
- ``E0`` uses only symbols of earlier steps and, with each symbol read as its parameter, is
  the parameter's definition (operands of + and * in any order);
- ``E1`` is ``E0`` with every symbol replaced by its value, each further expression has the
  same value mod p as the one before, and the chain ends in the parameter's value.

Steps that define parameters the question does not need are allowed if correct. The solution
is correct when every step passes and the question's parameter is defined; otherwise the
result names the first failing step and why. Spacing is free: ``Zoo ' s Lion`` (a word
tokenizer's decoding) reads as ``Zoo's Lion``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from minirepro.tasks.igsm.expr import (
    ParseError,
    canonical,
    evaluate,
    leaves,
    n_ops,
    parse,
    render,
    substitute,
)
from minirepro.tasks.igsm.graph import Param, StructureGraph
from minirepro.tasks.igsm.problem import Problem

__all__ = ["BACK", "CheckResult", "StepCheck", "check_solution", "split_steps", "step_texts"]

BACK = "[BACK]"
_TOKEN = re.compile(r"\[BACK\]|\w+|[^\w\s]")


@dataclass(frozen=True)
class StepCheck:
    """The verdict on one step.

    Attributes:
        index: Position of the step in the solution (0-based, [BACK] attempts included).
        text: The step's tokens joined by spaces.
        param: The parameter it names, if the name was understood.
        back: Whether it is a retracted ``[BACK]`` attempt.
        ok: Whether it passed.
        reason: Why it failed (None when ok).
    """

    index: int
    text: str
    param: Param | None
    back: bool
    ok: bool
    reason: str | None = None


@dataclass(frozen=True)
class CheckResult:
    """The verdict on a whole solution.

    Attributes:
        correct: Every step passed and the question's parameter is defined.
        failed_step: Index of the first failing step; ``n_steps`` when the steps pass but the
            question is never answered; None when correct.
        reason: Why it failed.
        answer: The value the solution gives the question's parameter, if it gets there.
        n_steps: Steps written, [BACK] attempts included.
        n_back: [BACK] attempts among them.
        steps: The per-step verdicts up to and including the first failure.
    """

    correct: bool
    failed_step: int | None
    reason: str | None
    answer: int | None
    n_steps: int
    n_back: int
    steps: tuple[StepCheck, ...]


def split_steps(text: str) -> list[list[str]]:
    """Tokens of each step: a step ends at "." or right after "[BACK]" (a "." after
    "[BACK]" belongs to it)."""
    steps: list[list[str]] = []
    cur: list[str] = []
    tokens = _TOKEN.findall(text)
    for tok in tokens:
        if tok == "." and not cur and steps and steps[-1][-1] == BACK:
            continue  # "[BACK]." : the period closes the retracted attempt
        cur.append(tok)
        if tok in (".", BACK):
            steps.append(cur)
            cur = []
    if cur:
        steps.append(cur)
    return steps


def step_texts(text: str) -> list[str]:
    """The text of each step, split where `split_steps` splits, spacing kept as written.

    ``" ".join(step_texts(p.solution)) == p.solution`` for a generated problem, and
    ``len(step_texts(t)) == len(split_steps(t))`` for any text.
    """
    spans: list[list[int]] = []  # [start, end] of each step in text
    start = None  # where the current step's first token begins
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok == "." and start is None and spans and text[: spans[-1][1]].endswith(BACK):
            spans[-1][1] = m.end()  # "[BACK]." : the period closes the retracted attempt
            continue
        if start is None:
            start = m.start()
        if tok in (".", BACK):
            spans.append([start, m.end()])
            start = None
    if start is not None:
        spans.append([start, len(text)])
    return [text[a:b].strip() for a, b in spans]


@lru_cache(maxsize=64)
def _names(structure: StructureGraph) -> dict[tuple[str, ...], Param]:
    params = structure.instance_params + structure.abstract_params
    return {tuple(_TOKEN.findall(structure.name(p))): p for p in params}


def check_solution(problem: Problem, text: str) -> CheckResult:
    """Check every step of ``text`` as a solution of ``problem``.

    Args:
        problem: The problem.
        text: The solution (without the problem text), any spacing.

    Returns:
        A `CheckResult` naming the first failing step and the reason, if any.
    """
    names = _names(problem.structure)
    env: dict[str, int] = {}  # symbol -> value, for steps that passed
    sym_param: dict[str, Param] = {}
    defined: dict[Param, str] = {}
    checks: list[StepCheck] = []
    steps = split_steps(text)
    n_back = sum(1 for s in steps if s[-1] == BACK)

    def result(ok: bool, idx: int | None, reason: str | None) -> CheckResult:
        q = defined.get(problem.question)
        answer = env.get(q) if q is not None else None
        return CheckResult(ok, idx, reason, answer, len(steps), n_back, tuple(checks))

    for idx, tokens in enumerate(steps):
        param, back, reason = _check_step(problem, names, tokens, env, sym_param, defined)
        checks.append(StepCheck(idx, " ".join(tokens), param, back, reason is None, reason))
        if reason is not None:
            return result(False, idx, reason)
    if problem.question not in defined:
        why = (
            f"the solution never defines the question's parameter {problem.name(problem.question)}"
        )
        return result(False, len(steps), why)
    return result(True, None, None)


def _check_step(
    problem: Problem,
    names: dict[tuple[str, ...], Param],
    tokens: list[str],
    env: dict[str, int],
    sym_param: dict[str, Param],
    defined: dict[Param, str],
) -> tuple[Param | None, bool, str | None]:
    """Check one step, recording what it defines. Returns (param, is_back, failure reason)."""
    if not tokens or tokens[0] != "Define" or "as" not in tokens:
        return None, False, "a step must read 'Define <parameter> as ...'"
    k = len(tokens) - 1 - tokens[::-1].index("as") if tokens[-1] == BACK else tokens.index("as")
    name = tokens[1:k]
    param = names.get(tuple(name))
    shown = " ".join(name)
    if param is None:
        return None, tokens[-1] == BACK, f"unknown parameter name {shown!r}"
    rest = tokens[k + 1 :]
    if rest == [BACK]:
        return param, True, None
    if len(rest) < 6 or rest[1:4] != [";", "so", rest[0]] or rest[4] != "=" or rest[-1] != ".":
        return (
            param,
            False,
            f"expected '<sym>; so <sym> = ... .' after the name, got {' '.join(rest)!r}",
        )
    sym = rest[0]
    if not re.fullmatch(r"[A-Za-z_]\w*", sym):
        return param, False, f"{sym!r} is not a symbol"
    if param in defined:
        return param, False, f"{problem.name(param)} is defined twice"
    if sym in env:
        return param, False, f"symbol {sym!r} is already used for {problem.name(sym_param[sym])}"
    chain_text = " ".join(rest[5:-1]).split(" = ")
    try:
        chain = [parse(t) for t in chain_text]
    except ParseError as exc:
        return param, False, f"cannot read the arithmetic: {exc}"
    e0 = chain[0]
    for leaf in leaves(e0):
        if isinstance(leaf, str) and leaf not in env:
            return param, False, f"uses symbol {leaf!r}, which no earlier step defines"
    truth = problem.expr_of(param)
    written = substitute(e0, lambda s: sym_param[s])
    if canonical(written) != canonical(truth):
        if isinstance(truth, int):
            shown_e0 = render(written, lambda p: problem.name(p))
            why = f"wrong value: the problem gives {problem.name(param)} as {truth}, not {shown_e0}"
            return param, False, why
        expected = render(truth, lambda p: problem.name(p))
        got = render(written, lambda p: problem.name(p))
        return param, False, f"wrong dependencies: {problem.name(param)} = {expected}, not {got}"
    mod = problem.mod
    if isinstance(e0, int):
        if len(chain) > 1:
            return param, False, f"nothing to evaluate after the number {e0}"
    else:
        values = substitute(e0, lambda s: env[s])
        if len(chain) < 2 or chain[1] != values:
            got = render(chain[1]) if len(chain) > 1 else "nothing"
            return param, False, f"operand values: expected {render(values)}, got {got}"
        for a, b in zip(chain[1:], chain[2:]):
            if any(not isinstance(x, int) for x in leaves(b)):
                return param, False, f"'{render(b)}' names a symbol in an arithmetic line"
            if isinstance(a, int) or (not isinstance(b, int) and n_ops(b) >= n_ops(a)):
                return param, False, f"'{render(a)} = {render(b)}' does not evaluate anything"
            if evaluate(a, mod) != evaluate(b, mod):
                return param, False, f"arithmetic error: {render(a)} is not {render(b)} mod {mod}"
    last = chain[-1]
    if not isinstance(last, int):
        return param, False, "the step does not end with a number"
    value = problem.values[param]
    if last != value:
        return param, False, f"wrong value: {problem.name(param)} is {value}, not {last}"
    env[sym], sym_param[sym], defined[param] = value, param, sym
    return param, False, None
