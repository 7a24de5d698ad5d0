"""An iGSM problem: its English statement, question and step-by-step solution.

The statement has one sentence per instance parameter (every edge of the structure graph,
needed or not), in the order `Problem.order`; the question asks for one parameter. The
solution defines each *needed* parameter (the question's ancestors in the dependency graph)
once, in a topological order, one step each::

    Define Riverside Zoo's Penguin as q; so q = 3 * (r + s) = 3 * (5 + 7) = 3 * 12 = 13.

The first expression names the operands by their symbols, the second substitutes their
values, and each further one evaluates one level, mod `Problem.mod`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

from minirepro.tasks.igsm.expr import (
    Expr,
    evaluate,
    leaves,
    n_ops,
    reduce_once,
    render,
    substitute,
)
from minirepro.tasks.igsm.graph import Definition, Param, StructureGraph

__all__ = ["Problem", "Step"]


@dataclass(frozen=True)
class Step:
    """One solution step.

    Attributes:
        param: The parameter it defines.
        symbol: The symbol it is given.
        expr: Its definition over the symbols of earlier steps (or a number).
        value: Its value mod p.
        text: The step as written in the solution.
    """

    param: Param
    symbol: str
    expr: Expr
    value: int
    text: str


@dataclass(frozen=True, eq=False)
class Problem:
    """A generated problem; build it with `generate`.

    Attributes:
        structure: The structure graph (names, edges).
        definitions: The definition of every instance parameter.
        question: The parameter asked for.
        order: Instance parameters in the order the statement states them.
        needed: The parameters the solution defines, in solution order (question last).
        symbols: The solution's symbol of each needed parameter.
        mod: Modulus of all arithmetic.
    """

    structure: StructureGraph
    definitions: Mapping[Param, Definition]
    question: Param
    order: tuple[Param, ...]
    needed: tuple[Param, ...]
    symbols: Mapping[Param, str]
    mod: int = 23

    # ----- the dependency graph --------------------------------------------------------------
    def expr_of(self, p: Param) -> Expr:
        """The definition of ``p`` over `Param` leaves (structural for abstract ones)."""
        if p.kind == "instance":
            if p not in self.definitions:
                raise KeyError(f"{p} is not a parameter of this problem")
            return self.definitions[p].expr
        return self.structure.abstract_expr(p)

    def deps(self, p: Param) -> tuple[Param, ...]:
        """The distinct parameters ``p`` is computed from, in order of appearance."""
        return tuple(dict.fromkeys(x for x in leaves(self.expr_of(p)) if isinstance(x, Param)))

    @cached_property
    def values(self) -> dict[Param, int]:
        """Value mod p of every instance and abstract parameter."""
        out: dict[Param, int] = {}

        def value(p: Param) -> int:
            if p not in out:
                env = {d: value(d) for d in self.deps(p)}
                out[p] = evaluate(self.expr_of(p), self.mod, env)
            return out[p]

        for p in self.structure.instance_params + self.structure.abstract_params:
            value(p)
        return out

    @property
    def answer(self) -> int:
        return self.values[self.question]

    @cached_property
    def op(self) -> int:
        """Number of arithmetic operations in the solution (the difficulty)."""
        return sum(n_ops(self.expr_of(p)) for p in self.needed)

    @cached_property
    def mentioned(self) -> tuple[Param, ...]:
        """Parameters the problem or its solution names: every instance parameter, the
        abstract ones used as operands, and the needed ones."""
        used = [x for p in self.order for x in self.deps(p)]
        return tuple(dict.fromkeys([*self.order, *used, *self.needed]))

    def name(self, p: Param) -> str:
        return self.structure.name(p)

    # ----- text ------------------------------------------------------------------------------
    def sentence(self, p: Param) -> str:
        """The statement's sentence defining instance parameter ``p``."""
        d = self.definitions[p]
        if d.combine == "const":
            rhs = str(d.const)
        else:
            refs = [f"each {self.name(a)}" for a in d.args]
            if d.combine == "diff":
                rhs = f"the difference of {refs[0]} and {refs[1]}"
            elif len(refs) == 1:
                rhs = refs[0]
            else:
                rhs = f"the sum of {', '.join(refs[:-1])} and {refs[-1]}"
            if d.modifier == "add":
                rhs = f"{d.const} more than {rhs}"
            elif d.modifier == "mul":
                rhs = f"{d.const} times {rhs}"
        return f"The number of each {self.name(p)} equals {rhs}."

    @property
    def statement(self) -> str:
        return " ".join(self.sentence(p) for p in self.order)

    @property
    def question_text(self) -> str:
        q = self.question
        layer = self.structure.items[q.layer + 1] if q.kind == "instance" else None
        what = layer[q.target] if layer is not None else self.structure.categories[q.target]
        return f"How many {what} does {self.structure.items[q.layer][q.item]} have?"

    @property
    def text(self) -> str:
        """Statement and question."""
        return f"{self.statement} {self.question_text}"

    @cached_property
    def steps(self) -> tuple[Step, ...]:
        out = []
        for p in self.needed:
            sym = self.symbols[p]
            e = substitute(self.expr_of(p), lambda x: self.symbols[x])
            out.append(Step(p, sym, e, self.values[p], self.step_text(p)))
        return tuple(out)

    def step_text(
        self, p: Param, values: Mapping[Param, int] | None = None, expr: Expr | None = None
    ) -> str:
        """The solution step defining needed parameter ``p``.

        Args:
            p: The parameter.
            values: Operand values to substitute (default: the true `values`); a step
                written from wrong earlier values is "correct given its premises".
            expr: The definition to write, over `Param` leaves (default: ``expr_of(p)``);
                another expression writes a step with a wrong dependency.
        """
        sym = self.symbols[p]
        values = self.values if values is None else values
        e = self.expr_of(p) if expr is None else expr
        chain = [render(e, lambda x: self.symbols[x])]
        if not isinstance(e, int):
            e = substitute(e, lambda x: values[x])
            chain.append(render(e))
            while not isinstance(e, int):
                e = reduce_once(e, self.mod)
                chain.append(render(e))
        return f"Define {self.name(p)} as {sym}; so {sym} = {' = '.join(chain)}."

    @property
    def solution(self) -> str:
        """The error-free solution: the steps joined by spaces."""
        return " ".join(s.text for s in self.steps)
