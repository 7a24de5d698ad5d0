"""Arithmetic expressions mod p: the one representation the generator, the renderer and the
checker share.

An expression is a leaf (an ``int``, or any hashable standing for a variable: a `Param` in the
generator, a symbol string in a solution) or a `Node` ``(op, children)`` with ``op`` one of
``"+"`` (n-ary sum), ``"-"`` (binary difference) and ``"*"`` (n-ary product).

- `n_ops` counts binary operations: a node with k children costs k - 1.
- `render` writes the expression with the fewest parentheses that keep it unambiguous.
- `reduce_once` evaluates one level (every node whose children are all numbers; of an n-ary
  node only the first two), which is how a solution step shows its intermediate arithmetic:
  ``3 * (5 + 7) = 3 * 12 = 13``.
- `parse` reads a rendered expression back; `canonical` sorts the operands of + and * so two
  expressions that differ only in operand order compare equal.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Expr",
    "Node",
    "ParseError",
    "canonical",
    "evaluate",
    "leaves",
    "n_ops",
    "parse",
    "reduce_once",
    "render",
    "substitute",
]

OPS = ("+", "-", "*")
Expr = Any  # int | Node | a hashable variable


@dataclass(frozen=True)
class Node:
    """An operation over two or more children (exactly two for "-")."""

    op: str
    children: tuple[Expr, ...]

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown operation {self.op!r}; expected one of {OPS}")
        if len(self.children) < 2 or (self.op == "-" and len(self.children) != 2):
            raise ValueError(f"{self.op!r} node with {len(self.children)} children")


class ParseError(ValueError):
    """Text that is not an arithmetic expression of numbers and symbols."""


def n_ops(e: Expr) -> int:
    """Number of binary operations in ``e``."""
    if isinstance(e, Node):
        return len(e.children) - 1 + sum(n_ops(c) for c in e.children)
    return 0


def leaves(e: Expr) -> list[Expr]:
    """The leaves of ``e`` from left to right."""
    if isinstance(e, Node):
        return [leaf for c in e.children for leaf in leaves(c)]
    return [e]


def substitute(e: Expr, fn: Callable[[Expr], Expr]) -> Expr:
    """Replace every non-number leaf ``x`` by ``fn(x)``."""
    if isinstance(e, Node):
        return Node(e.op, tuple(substitute(c, fn) for c in e.children))
    return e if isinstance(e, int) else fn(e)


def evaluate(e: Expr, mod: int, env: Mapping[Hashable, int] | None = None) -> int:
    """Value of ``e`` mod ``mod``; variables are looked up in ``env``."""
    if isinstance(e, Node):
        vals = [evaluate(c, mod, env) for c in e.children]
        if e.op == "+":
            return sum(vals) % mod
        if e.op == "-":
            return (vals[0] - vals[1]) % mod
        out = 1
        for v in vals:
            out = out * v % mod
        return out
    if isinstance(e, int):
        return e % mod
    if env is None or e not in env:
        raise KeyError(f"no value for variable {e!r}")
    return env[e] % mod


def reduce_once(e: Expr, mod: int) -> Expr:
    """Evaluate one level: every node whose children are all numbers.

    An n-ary node of numbers reduces its first two operands only, so each shown line of a
    sum ``5 + 7 + 13`` does one addition: ``12 + 13``, then ``2``.
    """
    if not isinstance(e, Node):
        return e
    if all(isinstance(c, int) for c in e.children):
        if len(e.children) == 2:
            return evaluate(e, mod)
        head = evaluate(Node(e.op, e.children[:2]), mod)
        return Node(e.op, (head, *e.children[2:]))
    return Node(e.op, tuple(reduce_once(c, mod) for c in e.children))


def _needs_parens(child: Expr, parent: str) -> bool:
    if not isinstance(child, Node):
        return False
    return not (child.op == "*" and parent in "+-")


def render(e: Expr, leaf: Callable[[Expr], str] = str) -> str:
    """Text of ``e``; non-number leaves are written by ``leaf``."""
    if isinstance(e, Node):
        parts = []
        for c in e.children:
            text = render(c, leaf)
            parts.append(f"({text})" if _needs_parens(c, e.op) else text)
        return f" {e.op} ".join(parts)
    return str(e) if isinstance(e, int) else leaf(e)


def canonical(e: Expr) -> Expr:
    """``e`` with nested sums/products flattened and their operands sorted."""
    if not isinstance(e, Node):
        return e
    children = [canonical(c) for c in e.children]
    if e.op in "+*":
        flat: list[Expr] = []
        for c in children:
            flat.extend(c.children if isinstance(c, Node) and c.op == e.op else [c])
        return Node(e.op, tuple(sorted(flat, key=repr)))
    return Node(e.op, tuple(children))


_TOKEN = re.compile(r"\s*(\d+|[A-Za-z_]\w*|[-+*()])")


def parse(text: str) -> Expr:
    """Read an expression of numbers, symbols (identifiers), + - * and parentheses.

    Sums and products are n-ary (``a + b + c`` is one node); ``-`` is left-associative.

    Raises:
        ParseError: Anything else, with the offending position.
    """
    tokens: list[str] = []
    pos, text = 0, text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ParseError(f"unexpected {text[pos:].strip()[:10]!r} in expression {text!r}")
        tokens.append(m.group(1))
        pos = m.end()
    if not tokens:
        raise ParseError("empty expression")
    parser = _Parser(tokens, text)
    out = parser.expr()
    if parser.i != len(tokens):
        raise ParseError(f"unexpected {tokens[parser.i]!r} in expression {text!r}")
    return out


class _Parser:
    def __init__(self, tokens: list[str], text: str) -> None:
        self.tokens, self.text, self.i = tokens, text, 0
        self._paren_ids: set[int] = set()  # nodes written in parentheses stay closed

    def _peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def expr(self) -> Expr:
        out = self.term()
        while self._peek() in ("+", "-"):
            op = self.tokens[self.i]
            self.i += 1
            rhs = self.term()
            if op == "+" and isinstance(out, Node) and out.op == "+" and not self._closed(out):
                out = Node("+", (*out.children, rhs))
            else:
                out = Node(op, (out, rhs))
        return out

    def term(self) -> Expr:
        out = self.factor()
        while self._peek() == "*":
            self.i += 1
            rhs = self.factor()
            if isinstance(out, Node) and out.op == "*" and not self._closed(out):
                out = Node("*", (*out.children, rhs))
            else:
                out = Node("*", (out, rhs))
        return out

    def _closed(self, node: Node) -> bool:
        return id(node) in self._paren_ids

    def factor(self) -> Expr:
        tok = self._peek()
        if tok is None:
            raise ParseError(f"expression {self.text!r} ends early")
        self.i += 1
        if tok == "(":
            inner = self.expr()
            if self._peek() != ")":
                raise ParseError(f"missing ')' in expression {self.text!r}")
            self.i += 1
            if isinstance(inner, Node):
                self._paren_ids.add(id(inner))
            return inner
        if tok.isdigit():
            return int(tok)
        if tok in OPS or tok == ")":
            raise ParseError(f"unexpected {tok!r} in expression {self.text!r}")
        return tok
