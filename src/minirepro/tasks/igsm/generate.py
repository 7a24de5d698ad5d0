"""Seeded generation of iGSM problems with an exact number of operations.

`generate(cfg, seed)` draws a structure graph, then builds the dependency graph backwards
from the question: each parameter still to be defined is either abstract (its definition,
and so its cost in operations, is fixed by the structure) or an instance parameter given a
definition whose cost fits the remaining budget of ``cfg.op`` operations. An attempt that
cannot spend the budget exactly, or would close a cycle, is discarded and redrawn (the
reference generator likewise rejects drafts until ``n_op == op``). Instance parameters the
question does not need get definitions too: they are the statement's distractors.

Determinism: every problem is drawn from ``random.Random(f"igsm:{seed}:{index}")``, whose
string seeding (SHA-512) and Mersenne Twister are the same on every platform and Python
version, so a seed gives the same problems everywhere.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Literal

from minirepro.tasks.igsm.expr import leaves, n_ops
from minirepro.tasks.igsm.graph import Definition, Param, StructureGraph
from minirepro.tasks.igsm.names import WORLDS
from minirepro.tasks.igsm.problem import Problem

__all__ = ["GenConfig", "GenerationError", "generate", "generate_many"]

SYMBOLS = tuple(string.ascii_lowercase + string.ascii_uppercase)
MAX_LAYERS = min(len(w.categories) for w in WORLDS)
MAX_WIDTH = min(len(pool) for w in WORLDS for pool in w.items)


class GenerationError(RuntimeError):
    """No problem with the requested settings was found within ``max_tries`` drafts."""


@dataclass(frozen=True)
class GenConfig:
    """What problems to draw (the reference's ``IdGen(max_op, max_edge, op, perm_level)``).

    Attributes:
        op: Exact number of operations of every solution; None draws it per problem,
            uniformly from ``[min_op, max_op]``.
        min_op: Smallest op when ``op`` is None.
        max_op: Largest op when ``op`` is None.
        max_edge: At most this many edges in the structure graph, i.e. sentences in the
            statement (needed parameters and distractors together).
        n_layer: (min, max) layers of the structure graph.
        width: (min, max) items per layer.
        perm_level: Order of the statement's sentences. 0-4: "mild", a dependency-respecting
            order with ``round(level * n / 4)`` random transpositions (0 keeps it); 5:
            "hard", a uniform shuffle; 6: "none", dependency order exactly; None: drawn per
            problem from 0-6 like the reference.
        mod: Modulus of all arithmetic ("all arithmetic mod 23").
        max_args: At most this many operands in one definition (1-3).
        p_reuse: Chance that an operand is a parameter already in the graph, which makes the
            dependency graph a DAG rather than a tree.
        p_const: Chance that an instance parameter is a plain number while the budget
            could still be spent on another pending parameter.
        symbol_method: "rand": each step's symbol is a random unused letter (the paper);
            "seq": a, b, c, ... in solution order (the reference's "seq" option; easier
            for small models).
        max_tries: Drafts per problem before `GenerationError`.
    """

    op: int | None = None
    min_op: int = 1
    max_op: int = 10
    max_edge: int = 15
    n_layer: tuple[int, int] = (2, 4)
    width: tuple[int, int] = (2, 4)
    perm_level: int | None = None
    mod: int = 23
    max_args: int = 3
    p_reuse: float = 0.3
    p_const: float = 0.3
    symbol_method: Literal["rand", "seq"] = "rand"
    max_tries: int = 5000

    def __post_init__(self) -> None:
        lo, hi = self.n_layer
        if not 2 <= lo <= hi <= MAX_LAYERS:
            raise ValueError(
                f"n_layer must satisfy 2 <= min <= max <= {MAX_LAYERS}, got {self.n_layer}"
            )
        lo, hi = self.width
        if not 1 <= lo <= hi <= MAX_WIDTH:
            raise ValueError(f"width must satisfy 1 <= min <= max <= {MAX_WIDTH}, got {self.width}")
        if self.op is not None and self.op < 0:
            raise ValueError(f"op must be >= 0, got {self.op}")
        if self.op is None and not 0 <= self.min_op <= self.max_op:
            raise ValueError(f"need 0 <= min_op <= max_op, got {self.min_op}, {self.max_op}")
        if self.max_edge < self.n_layer[0] - 1:
            raise ValueError(f"max_edge={self.max_edge} cannot link {self.n_layer[0]} layers")
        if self.perm_level is not None and not 0 <= self.perm_level <= 6:
            raise ValueError(f"perm_level must be in 0..6 or None, got {self.perm_level}")
        if self.mod < 2:
            raise ValueError(f"mod must be >= 2, got {self.mod}")
        if not 1 <= self.max_args <= 3:
            raise ValueError(f"max_args must be in 1..3, got {self.max_args}")
        for name in ("p_reuse", "p_const"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.symbol_method not in ("rand", "seq"):
            raise ValueError(f"symbol_method must be 'rand' or 'seq', got {self.symbol_method!r}")
        if self.max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {self.max_tries}")


def generate(cfg: GenConfig, seed: int, index: int = 0) -> Problem:
    """Draw one problem.

    Args:
        cfg: What to draw.
        seed: The seed; with ``index`` it fixes the problem on every platform.
        index: Which problem of the seed's stream (`generate_many` uses 0, 1, ...).

    Returns:
        A `Problem` whose ``op`` equals ``cfg.op`` (or the drawn op).

    Raises:
        GenerationError: No draft met the settings within ``cfg.max_tries``.
    """
    rng = random.Random(f"igsm:{seed}:{index}")
    op = cfg.op if cfg.op is not None else rng.randint(cfg.min_op, cfg.max_op)
    for _ in range(cfg.max_tries):
        problem = _attempt(cfg, op, rng)
        if problem is not None:
            return problem
    raise GenerationError(
        f"no problem with op={op} in {cfg.max_tries} drafts (max_edge={cfg.max_edge}, "
        f"n_layer={cfg.n_layer}, width={cfg.width}); allow more edges, layers or width"
    )


def generate_many(cfg: GenConfig, n: int, seed: int) -> list[Problem]:
    """``n`` problems: ``generate(cfg, seed, index)`` for index 0 .. n - 1."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [generate(cfg, seed, i) for i in range(n)]


# ----- one draft ------------------------------------------------------------------------------
def _structure(cfg: GenConfig, rng: random.Random) -> StructureGraph:
    n_layer = rng.randint(*cfg.n_layer)
    world = rng.choice(WORLDS)
    start = rng.randint(0, len(world.categories) - n_layer)
    items = tuple(
        tuple(rng.sample(world.items[start + k], rng.randint(*cfg.width))) for k in range(n_layer)
    )
    possible = [
        (layer, i, j)
        for layer in range(n_layer - 1)
        for i in range(len(items[layer]))
        for j in range(len(items[layer + 1]))
    ]
    n_edge = rng.randint(n_layer - 1, min(cfg.max_edge, len(possible)))
    # one edge between every pair of layers, the rest anywhere
    edges = {rng.choice([e for e in possible if e[0] == layer]) for layer in range(n_layer - 1)}
    rest = [e for e in possible if e not in edges]
    edges.update(rng.sample(rest, n_edge - len(edges)))
    return StructureGraph(world.categories[start : start + n_layer], items, tuple(sorted(edges)))


_SHAPES = {  # cost -> (operands, with a "more than"/"times" modifier)
    1: [(1, True), (2, False)],
    2: [(2, True), (3, False)],
    3: [(3, True)],
}


def _attempt(cfg: GenConfig, op: int, rng: random.Random) -> Problem | None:
    s = _structure(cfg, rng)
    candidates = list(s.instance_params + s.abstract_params)
    deps: dict[Param, tuple[Param, ...]] = {}  # known operands of each parameter
    defs: dict[Param, Definition] = {}

    def known_deps(p: Param) -> tuple[Param, ...]:
        if p in deps:
            return deps[p]
        if p.kind == "abstract":
            return tuple(x for x in leaves(s.abstract_expr(p)) if isinstance(x, Param))
        return ()  # an instance parameter not defined yet has no operands so far

    def depends_on(a: Param, p: Param) -> bool:
        stack, seen = [a], set()
        while stack:
            x = stack.pop()
            if x == p:
                return True
            if x not in seen:
                seen.add(x)
                stack.extend(known_deps(x))
        return False

    question = rng.choice(candidates)
    pending, needed, budget = [question], [], op
    while pending:
        p = pending.pop(0)
        needed.append(p)
        if p.kind == "abstract":
            cost = n_ops(s.abstract_expr(p))
            args = known_deps(p)
            if cost > budget or any(depends_on(a, p) for a in args):
                return None
            budget -= cost
        else:
            others = any(x.kind == "instance" for x in pending)
            if budget == 0 or (others and rng.random() < cfg.p_const):
                defs[p] = Definition("const", const=rng.randrange(cfg.mod))
                deps[p] = ()
                continue
            shapes = [sh for sh in _SHAPES[rng.randint(1, min(3, budget))] if sh[0] <= cfg.max_args]
            if not shapes:
                return None
            n_args, modify = rng.choice(shapes)
            args = _pick_args(cfg, rng, p, n_args, candidates, needed + pending, depends_on)
            if args is None:
                return None
            defs[p] = _definition(cfg, rng, args, modify)
            budget -= defs[p].n_ops
        deps[p] = tuple(args)
        pending.extend(a for a in args if a not in needed and a not in pending)
    if budget:
        return None
    _add_distractors(cfg, rng, s, defs, needed)
    order = _statement_order(cfg, rng, s, defs)
    if len(needed) > len(SYMBOLS):
        return None
    symbols = dict(zip(needed, rng.sample(SYMBOLS, len(needed))))
    draft = Problem(s, defs, question, order, (), symbols, cfg.mod)
    steps = solution_order(draft, needed)
    if cfg.symbol_method == "seq":  # a, b, c, ... in solution order
        symbols = dict(zip(steps, SYMBOLS))
    return Problem(s, defs, question, order, steps, symbols, cfg.mod)


def _pick_args(cfg, rng, p, n_args, candidates, in_graph, depends_on) -> list[Param] | None:
    args: list[Param] = []
    for _ in range(n_args):
        ok = [c for c in candidates if c != p and c not in args and not depends_on(c, p)]
        reuse = [c for c in ok if c in in_graph]
        pool = (
            reuse if reuse and rng.random() < cfg.p_reuse else [c for c in ok if c not in in_graph]
        )
        pool = pool or ok
        if not pool:
            return None
        args.append(rng.choice(pool))
    return args


def _definition(cfg: GenConfig, rng: random.Random, args: list[Param], modify: bool) -> Definition:
    combine = "diff" if len(args) == 2 and rng.random() < 0.3 else "sum"
    if not modify:
        return Definition(combine, tuple(args))
    if rng.random() < 0.5:
        return Definition(combine, tuple(args), "add", rng.randint(1, cfg.mod - 1))
    return Definition(combine, tuple(args), "mul", rng.randint(2, max(2, cfg.mod - 1)))


def _add_distractors(cfg, rng, s: StructureGraph, defs: dict, needed: list[Param]) -> None:
    """Define every instance parameter the question does not need: a number, or an
    expression of parameters defined already (so none of the needed ones depends on it)."""
    unused = [p for p in s.instance_params if p not in defs]
    rng.shuffle(unused)
    pool = [p for p in needed if p.kind == "instance"]
    for p in unused:
        if not pool or rng.random() < 0.5:
            defs[p] = Definition("const", const=rng.randrange(cfg.mod))
        else:
            n_args = rng.randint(1, min(cfg.max_args, len(pool)))
            modify = n_args < cfg.max_args and rng.random() < 0.5 or n_args == 1
            defs[p] = _definition(cfg, rng, rng.sample(pool, n_args), modify)
        pool.append(p)


def _instance_deps(s: StructureGraph, defs: dict, p: Param) -> set[Param]:
    """Instance parameters a sentence refers to, abstract operands expanded."""
    out: set[Param] = set()
    stack = list(defs[p].args)
    while stack:
        x = stack.pop()
        if x.kind == "instance":
            out.add(x)
        else:
            stack.extend(y for y in leaves(s.abstract_expr(x)) if isinstance(y, Param))
    return out


def _statement_order(cfg, rng, s: StructureGraph, defs: dict) -> tuple[Param, ...]:
    level = cfg.perm_level if cfg.perm_level is not None else rng.randint(0, 6)
    params = list(s.instance_params)
    if level == 5:
        rng.shuffle(params)
        return tuple(params)
    before = {p: _instance_deps(s, defs, p) for p in params}
    order: list[Param] = []
    while len(order) < len(params):  # Kahn's algorithm, ties broken at random
        ready = [p for p in params if p not in order and before[p] <= set(order)]
        order.append(rng.choice(ready))
    if level < 6:
        for _ in range(round(level * len(order) / 4)):
            i, j = rng.randrange(len(order)), rng.randrange(len(order))
            order[i], order[j] = order[j], order[i]
    return tuple(order)


def solution_order(problem: Problem, params: list[Param] | tuple[Param, ...]) -> tuple[Param, ...]:
    """A topological order of ``params`` (a set closed under dependencies): at each step,
    of the parameters whose operands are all defined, the one the statement mentions first
    (abstract parameters by the first sentence using them; never-mentioned ones last)."""
    first: dict[Param, int] = {}
    for k, p in enumerate(problem.order):
        for x in (p, *problem.deps(p)):
            first.setdefault(x, k)
    todo, done, out = set(params), set(), []
    while todo:
        ready = [p for p in todo if set(problem.deps(p)) <= done]
        if not ready:
            raise ValueError("the parameters are not closed under dependencies, or cyclic")
        p = min(ready, key=lambda x: (first.get(x, len(problem.order)), x))
        out.append(p)
        done.add(p)
        todo.remove(p)
    return tuple(out)
