"""ConstrINT: a small integer constraint solver, used to pick the kernels' tile sizes.

FlashRNN chooses its kernels' tiling (batch per block, heads per block, warps, register and
shared-memory splits) by solving integer constraints derived from the hardware's limits. This
is a self-contained version: integer variables with list or range domains; expressions built
from them with `+`, `*` and `%`; constraints `==`, `<=`, `>=` between expressions; bounds
propagation to a fixed point; then depth-first search, each variable trying its values
largest-first or smallest-first, with propagation at every node.

    bt = Var("bt", range(1, 17), prefer="largest")
    nb = Var("nb", range(1, 17))
    solution = solve([bt * nb == 16, nb % 2 == 0])   # {"bt": 8, "nb": 2}

`solve` returns a dict name -> value that satisfies every constraint, or None when the system
is infeasible (the search is complete, so None means no assignment exists).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["Constraint", "Expr", "Var", "check", "solve"]

Interval = tuple[int, int]


class Expr(ABC):
    """An integer expression over Vars."""

    @abstractmethod
    def vars(self) -> dict[str, Var]:
        """The variables in the expression, by name."""

    @abstractmethod
    def value(self, env: dict[str, int]) -> int:
        """The expression's value under a full assignment."""

    @abstractmethod
    def interval(self, dom: dict[str, list[int]]) -> Interval:
        """Bounds of the expression when each variable ranges over its domain."""

    def __add__(self, other: Expr | int) -> Expr:
        return Add(self, _expr(other))

    __radd__ = __add__

    def __mul__(self, other: Expr | int) -> Expr:
        return Mul(self, _expr(other))

    __rmul__ = __mul__

    def __mod__(self, other: Expr | int) -> Expr:
        return Mod(self, _expr(other))

    def __eq__(self, other: Expr | int) -> Constraint:  # type: ignore[override]
        return Constraint("==", self, _expr(other))

    def __le__(self, other: Expr | int) -> Constraint:
        return Constraint("<=", self, _expr(other))

    def __ge__(self, other: Expr | int) -> Constraint:
        return Constraint("<=", _expr(other), self)

    __hash__ = object.__hash__


def _expr(x: Expr | int) -> Expr:
    if isinstance(x, Expr):
        return x
    if isinstance(x, int):
        return Const(x)
    raise TypeError(f"expected an Expr or int, got {type(x).__name__}")


class Var(Expr):
    """An integer variable.

    Args:
        name: Unique name, the key in the solution.
        domain: The allowed values: a list/tuple/range of ints.
        prefer: Search order of the values: "largest" first or "smallest" first.
    """

    def __init__(
        self, name: str, domain: Iterable[int], prefer: Literal["largest", "smallest"] = "largest"
    ) -> None:
        self.name = name
        self.domain = sorted(set(int(v) for v in domain))
        if prefer not in ("largest", "smallest"):
            raise ValueError(f"prefer must be 'largest' or 'smallest', got {prefer!r}")
        self.prefer = prefer

    def vars(self) -> dict[str, Var]:
        return {self.name: self}

    def value(self, env):
        return env[self.name]

    def interval(self, dom):
        d = dom[self.name]
        return d[0], d[-1]

    def __repr__(self) -> str:
        return f"Var({self.name!r})"


@dataclass(eq=False)
class Const(Expr):
    c: int

    def vars(self):
        return {}

    def value(self, env):
        return self.c

    def interval(self, dom):
        return self.c, self.c


@dataclass(eq=False)
class Add(Expr):
    a: Expr
    b: Expr

    def vars(self):
        return self.a.vars() | self.b.vars()

    def value(self, env):
        return self.a.value(env) + self.b.value(env)

    def interval(self, dom):
        (a0, a1), (b0, b1) = self.a.interval(dom), self.b.interval(dom)
        return a0 + b0, a1 + b1


@dataclass(eq=False)
class Mul(Expr):
    a: Expr
    b: Expr

    def vars(self):
        return self.a.vars() | self.b.vars()

    def value(self, env):
        return self.a.value(env) * self.b.value(env)

    def interval(self, dom):
        (a0, a1), (b0, b1) = self.a.interval(dom), self.b.interval(dom)
        corners = (a0 * b0, a0 * b1, a1 * b0, a1 * b1)
        return min(corners), max(corners)


@dataclass(eq=False)
class Mod(Expr):
    """a % b with Python's semantics; b == 0 makes the expression undefined (never satisfied)."""

    a: Expr
    b: Expr

    def vars(self):
        return self.a.vars() | self.b.vars()

    def value(self, env):
        b = self.b.value(env)
        if b == 0:
            raise ZeroDivisionError
        return self.a.value(env) % b

    def interval(self, dom):
        (a0, a1), (b0, b1) = self.a.interval(dom), self.b.interval(dom)
        if a0 == a1 and b0 == b1:
            if b0 == 0:
                return 1, 0  # empty: undefined
            return a0 % b0, a0 % b0
        m = max(abs(b0), abs(b1))
        if b0 >= 0 and a0 >= 0:
            return 0, max(0, min(a1, m - 1))
        return -m, m


@dataclass(eq=False)
class Constraint:
    """lhs op rhs with op "==" or "<="."""

    op: str
    lhs: Expr
    rhs: Expr

    def vars(self) -> dict[str, Var]:
        return self.lhs.vars() | self.rhs.vars()

    def holds(self, env: dict[str, int]) -> bool:
        try:
            a, b = self.lhs.value(env), self.rhs.value(env)
        except ZeroDivisionError:
            return False
        return a == b if self.op == "==" else a <= b

    def possible(self, dom: dict[str, list[int]]) -> bool:
        """False only if no assignment from the domains can satisfy the constraint."""
        (a0, a1), (b0, b1) = self.lhs.interval(dom), self.rhs.interval(dom)
        if a0 > a1 or b0 > b1:
            return False
        if self.op == "==":
            return a0 <= b1 and b0 <= a1
        return a0 <= b1

    def __bool__(self) -> bool:
        raise TypeError("a Constraint has no truth value; pass it to solve()")


def _propagate(constraints: Sequence[Constraint], dom: dict[str, list[int]]) -> bool:
    """Removes values with no support under interval bounds; False if a domain empties."""
    by_var: dict[str, list[Constraint]] = {}
    for c in constraints:
        for v in c.vars():
            by_var.setdefault(v, []).append(c)
    queue = list(constraints)
    queued = set(map(id, queue))
    while queue:
        c = queue.pop()
        queued.discard(id(c))
        variables = c.vars()
        if all(len(dom[v]) == 1 for v in variables):
            if not c.holds({v: dom[v][0] for v in variables}):
                return False
            continue
        for v in variables:
            values = dom[v]
            if len(values) == 1:
                continue
            kept = []
            for x in values:
                dom[v] = [x]
                if c.possible(dom):
                    kept.append(x)
            dom[v] = kept
            if not kept:
                return False
            if len(kept) < len(values):
                for other in by_var[v]:
                    if id(other) not in queued:
                        queue.append(other)
                        queued.add(id(other))
    return True


def solve(
    constraints: Sequence[Constraint], variables: Sequence[Var] | None = None
) -> dict[str, int] | None:
    """Finds an assignment satisfying every constraint, or None if there is none.

    Variables are branched on in the order given (default: order of first appearance in
    the constraints), each trying its values in its `prefer` order, so the first solution
    found is the lexicographically preferred one (e.g. the largest tile that fits).

    Args:
        constraints: The constraints.
        variables: Variables to assign, including any not mentioned in a constraint.

    Returns:
        {name: value}, or None when the system is infeasible.
    """
    order: dict[str, Var] = {}
    for v in variables or []:
        order[v.name] = v
    for c in constraints:
        if not isinstance(c, Constraint):
            raise TypeError(f"expected a Constraint, got {type(c).__name__}")
        for name, v in sorted(c.vars().items()):
            if order.setdefault(name, v) is not v:
                raise ValueError(f"two different variables are named {name!r}")
    dom = {name: list(v.domain) for name, v in order.items()}
    if any(not d for d in dom.values()) or not _propagate(constraints, dom):
        return None
    return _search(constraints, order, dom)


def _search(constraints, order, dom):
    free = [name for name in order if len(dom[name]) > 1]
    if not free:
        env = {name: dom[name][0] for name in order}
        return env if all(c.holds(env) for c in constraints) else None
    name = free[0]
    values = dom[name] if order[name].prefer == "smallest" else reversed(dom[name])
    for x in values:
        child = {k: list(d) for k, d in dom.items()}
        child[name] = [x]
        if _propagate(constraints, child):
            found = _search(constraints, order, child)
            if found is not None:
                return found
    return None


def check(constraints: Sequence[Constraint], solution: dict[str, int]) -> bool:
    """True if `solution` (name -> value) satisfies every constraint."""
    return all(c.holds(solution) for c in constraints)


def brute_force(constraints: Sequence[Constraint], variables: Sequence[Var]) -> bool:
    """True if some assignment satisfies every constraint (exhaustive; for tests)."""
    for values in itertools.product(*(v.domain for v in variables)):
        env = {v.name: x for v, x in zip(variables, values)}
        if all(c.holds(env) for c in constraints):
            return True
    return False
