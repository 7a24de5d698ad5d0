"""A synthetic ProcessBench: iGSM solutions with one injected first error at a known step.

Each record is an iGSM problem (`minirepro.tasks.igsm`) and its step-by-step solution, one
step per paragraph, in the reference's record format. About half the records keep the
error-free solution (label -1); the others get one error at step ``k`` (label ``k``):

- "arithmetic": step ``k`` (one with arithmetic, when there is one) ends in a wrong value;
- "dependency": step ``k`` adds an operand the parameter does not depend on (an earlier
  step's symbol) and computes the wrong expression consistently;
- "skipped": a step that a later step needs is left out; the label is the first step that
  uses the missing symbol (`minirepro.tasks.igsm.corrupt_solution`, kind "missing").

An arithmetic or dependency error either *propagates* (later steps are recomputed from the
wrong value, so the final answer is usually wrong) or not (later steps keep the true
values: the final answer stays right although the process is wrong, as with a slip that a
model silently corrects). A skipped step never changes the final answer. ``meta`` of each
record holds ``op``, ``error_kind`` and ``propagated``; ``final_answer_correct`` is
computed from the values written, not assumed.

Splits by difficulty are splits by ``op`` (operations in the solution): `easy_hard` makes
an easy and a hard subset with different op ranges. The iGSM checker rejects every error
record exactly at its label and accepts every step before it (tested).
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass, replace
from typing import Literal

from minirepro.papers.processbench.records import Record
from minirepro.tasks.igsm import GenConfig, Problem, corrupt_solution, generate, step_texts
from minirepro.tasks.igsm.expr import Node, evaluate, n_ops

__all__ = [
    "ERROR_KINDS",
    "SynthConfig",
    "easy_hard",
    "inject_error",
    "synthetic_records",
]

ERROR_KINDS = ("arithmetic", "dependency", "skipped")
ErrorKind = Literal["arithmetic", "dependency", "skipped"]


@dataclass(frozen=True)
class SynthConfig:
    """What records to make.

    Attributes:
        n: Records in the subset.
        min_op: Smallest op of the problems.
        max_op: Largest op.
        p_error: Share of records with an injected error (the reference subsets have 40-75%).
        p_propagate: Chance that an arithmetic or dependency error propagates.
        kinds: Error kinds to draw from, uniformly.
        max_edge: Sentences per statement (`GenConfig.max_edge`).
        n_layer: (min, max) layers of the structure graph.
        width: (min, max) items per layer.
        perm_level: Statement order (`GenConfig.perm_level`).
        symbol_method: "rand" or "seq" symbols.
    """

    n: int = 100
    min_op: int = 2
    max_op: int = 4
    p_error: float = 0.5
    p_propagate: float = 0.5
    kinds: tuple[str, ...] = ERROR_KINDS
    max_edge: int = 8
    n_layer: tuple[int, int] = (2, 3)
    width: tuple[int, int] = (2, 3)
    perm_level: int | None = 6
    symbol_method: Literal["rand", "seq"] = "seq"

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")
        if not 1 <= self.min_op <= self.max_op:
            raise ValueError(f"need 1 <= min_op <= max_op, got {self.min_op}, {self.max_op}")
        for name in ("p_error", "p_propagate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        bad = [k for k in self.kinds if k not in ERROR_KINDS]
        if bad or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {ERROR_KINDS}, got {self.kinds}")

    def gen_config(self) -> GenConfig:
        return GenConfig(
            min_op=self.min_op, max_op=self.max_op, max_edge=self.max_edge,
            n_layer=self.n_layer, width=self.width, perm_level=self.perm_level,
            symbol_method=self.symbol_method,
        )  # fmt: skip


def _propagate(problem: Problem, k: int, wrong: dict, texts: list[str], propagate: bool) -> int:
    """With ``propagate``, rewrite the steps after ``k`` from the values in ``wrong`` (the
    changed step's parameter already set). Returns the final answer as written."""
    last = len(problem.steps) - 1
    if not propagate:
        return wrong[problem.question] if k == last else problem.answer
    for j in range(k + 1, last + 1):
        p = problem.steps[j].param
        wrong[p] = evaluate(problem.expr_of(p), problem.mod, wrong)
        texts[j] = problem.step_text(p, wrong)
    return wrong[problem.question]


def inject_error(
    problem: Problem, kind: ErrorKind, rng: random.Random, propagate: bool = False
) -> tuple[list[str], int, bool] | None:
    """One solution of ``problem`` with a first error of ``kind``.

    Args:
        problem: The iGSM problem.
        kind: One of `ERROR_KINDS`.
        rng: Picks the step and the wrong value.
        propagate: Recompute later steps from the wrong value (arithmetic, dependency).

    Returns:
        ``(steps, label, final_answer_correct)``, or None when the problem has no step
        where this kind of error can be made.
    """
    steps = problem.steps
    texts = [s.text for s in steps]
    mod = problem.mod
    if kind == "skipped":
        out = corrupt_solution(problem, "missing", rng)
        if out is None:
            return None
        text, label = out
        return step_texts(text), label, True
    if kind == "arithmetic":
        sites = [k for k, s in enumerate(steps) if n_ops(s.expr) > 0] or list(range(len(steps)))
        k = rng.choice(sites)
        p = steps[k].param
        w = (steps[k].value + rng.randint(1, mod - 1)) % mod
        texts[k] = re.sub(r"= \d+\.$", f"= {w}.", texts[k])
    elif kind == "dependency":
        sites = [k for k in range(1, len(steps)) if isinstance(steps[k].expr, Node)]
        sites = [
            k for k in sites if any(t.param not in problem.deps(steps[k].param) for t in steps[:k])
        ]
        if not sites:
            return None
        k = rng.choice(sites)
        p = steps[k].param
        extra = rng.choice([t.param for t in steps[:k] if t.param not in problem.deps(p)])
        expr = Node("+", (problem.expr_of(p), extra))
        w = evaluate(expr, mod, problem.values)
        texts[k] = problem.step_text(p, expr=expr)
    else:
        raise ValueError(f"unknown error kind {kind!r}; expected one of {ERROR_KINDS}")
    wrong = dict(problem.values) | {p: w}
    answer = _propagate(problem, k, wrong, texts, propagate)
    return texts, k, answer == problem.answer


def synthetic_records(cfg: SynthConfig, seed: int, subset: str) -> list[Record]:
    """``cfg.n`` records of one subset, ids ``"<subset>-<i>"``.

    Args:
        cfg: What to make.
        seed: Seed of the problems and the errors (with ``subset``: two subsets with the
            same seed draw different problems).
        subset: The subset name.
    """
    gen = cfg.gen_config()
    base = zlib.crc32(f"{subset}:{seed}".encode())
    out = []
    for i in range(cfg.n):
        problem = generate(gen, base, i)
        rng = random.Random(f"processbench:{base}:{i}")
        steps, label, fac = [s.text for s in problem.steps], -1, True
        kind, propagated = None, False
        if rng.random() < cfg.p_error:
            kinds = list(cfg.kinds)
            rng.shuffle(kinds)
            for kind in kinds:  # the first kind this problem admits
                propagated = kind != "skipped" and rng.random() < cfg.p_propagate
                made = inject_error(problem, kind, rng, propagated)
                if made is not None:
                    steps, label, fac = made
                    break
            else:
                kind, propagated = None, False
        out.append(
            Record(
                id=f"{subset}-{i}",
                problem=problem.text,
                steps=tuple(steps),
                label=label,
                final_answer_correct=fac,
                generator="igsm",
                meta={"op": problem.op, "error_kind": kind, "propagated": propagated},
            )
        )
    return out


def easy_hard(
    cfg: SynthConfig, seed: int, easy_ops: tuple[int, int], hard_ops: tuple[int, int]
) -> list[Record]:
    """An "igsm-easy" and an "igsm-hard" subset of ``cfg.n`` records each, by op range."""
    easy = replace(cfg, min_op=easy_ops[0], max_op=easy_ops[1])
    hard = replace(cfg, min_op=hard_ops[0], max_op=hard_ops[1])
    return synthetic_records(easy, seed, "igsm-easy") + synthetic_records(hard, seed, "igsm-hard")
