"""Structure graph, parameters and definitions of an iGSM problem.

The *structure graph* has ``n_layer`` layers of items (layer 0 outermost, e.g. zoos; layer 1
enclosures; ...). An edge links item ``i`` of layer ``l`` to item ``j`` of layer ``l + 1`` and
makes an *instance parameter*: how many ``j`` each ``i`` has ("each Riverside Zoo's Penguin
Beach"). An *abstract parameter* is how many items of a deeper layer ``L`` an item holds in
all ("Riverside Zoo's Animal"); it is fixed by the structure::

    abstract(i, L) = sum over edges i -> j of  count(i -> j) * (1 if L = l + 1 else abstract(j, L))

over the children ``j`` that reach layer ``L``. Every instance parameter is defined in the
problem text, by a number or by an expression of other parameters; the *dependency graph*
has an edge from each operand to the parameter it defines, and must be acyclic.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal, NamedTuple

from minirepro.tasks.igsm.expr import Expr, Node, n_ops

__all__ = ["Definition", "Param", "StructureGraph"]


class Param(NamedTuple):
    """A parameter: ``kind`` "instance" (``target`` is an item of layer ``layer + 1``) or
    "abstract" (``target`` is a layer index > ``layer``)."""

    kind: Literal["instance", "abstract"]
    layer: int
    item: int
    target: int


@dataclass(frozen=True)
class StructureGraph:
    """Layers of named items and the edges between consecutive layers.

    Attributes:
        categories: Category name of each layer, outermost first.
        items: Item names of each layer.
        edges: ``(layer, i, j)``: item i of ``layer`` holds items j of ``layer + 1``; sorted.
    """

    categories: tuple[str, ...]
    items: tuple[tuple[str, ...], ...]
    edges: tuple[tuple[int, int, int], ...]

    def __post_init__(self) -> None:
        if len(self.categories) != len(self.items) or len(self.items) < 2:
            raise ValueError("a structure graph needs >= 2 layers, one item list each")
        for layer, i, j in self.edges:
            if not (0 <= layer < len(self.items) - 1):
                raise ValueError(f"edge {(layer, i, j)}: layer out of range")
            if not (0 <= i < len(self.items[layer]) and 0 <= j < len(self.items[layer + 1])):
                raise ValueError(f"edge {(layer, i, j)}: item out of range")

    @property
    def n_layer(self) -> int:
        return len(self.items)

    @cached_property
    def _children(self) -> dict[tuple[int, int], tuple[int, ...]]:
        out: dict[tuple[int, int], list[int]] = {}
        for layer, i, j in self.edges:
            out.setdefault((layer, i), []).append(j)
        return {k: tuple(v) for k, v in out.items()}

    def children(self, layer: int, item: int) -> tuple[int, ...]:
        """Items of ``layer + 1`` that item ``item`` of ``layer`` holds."""
        return self._children.get((layer, item), ())

    def reaches(self, layer: int, item: int, target: int) -> bool:
        """Whether a path of edges leads from the item down to layer ``target`` (> layer)."""
        if target == layer + 1:
            return bool(self.children(layer, item))
        return any(self.reaches(layer + 1, j, target) for j in self.children(layer, item))

    @cached_property
    def instance_params(self) -> tuple[Param, ...]:
        return tuple(Param("instance", layer, i, j) for layer, i, j in self.edges)

    @cached_property
    def abstract_params(self) -> tuple[Param, ...]:
        """Every (item, deeper layer) pair joined by a path."""
        return tuple(
            Param("abstract", layer, i, target)
            for layer in range(self.n_layer - 1)
            for i in range(len(self.items[layer]))
            for target in range(layer + 1, self.n_layer)
            if self.reaches(layer, i, target)
        )

    def abstract_expr(self, p: Param) -> Expr:
        """The structural definition of an abstract parameter over other parameters."""
        if p.kind != "abstract" or not self.reaches(p.layer, p.item, p.target):
            raise ValueError(f"{p} is not an abstract parameter of this structure")
        terms: list[Expr] = []
        for j in self.children(p.layer, p.item):
            edge = Param("instance", p.layer, p.item, j)
            if p.target == p.layer + 1:
                terms.append(edge)
            elif self.reaches(p.layer + 1, j, p.target):
                terms.append(Node("*", (edge, Param("abstract", p.layer + 1, j, p.target))))
        return terms[0] if len(terms) == 1 else Node("+", tuple(terms))

    def name(self, p: Param) -> str:
        """English name: "Riverside Zoo's Penguin Beach" or "Riverside Zoo's Animal"."""
        owner = self.items[p.layer][p.item]
        if p.kind == "instance":
            return f"{owner}'s {self.items[p.layer + 1][p.target]}"
        return f"{owner}'s {self.categories[p.target]}"


@dataclass(frozen=True)
class Definition:
    """How the problem text defines an instance parameter.

    ``value = modifier(combine(args))``: ``combine`` is "const" (no args, the number
    ``const``), "sum" (1-3 args; one arg is the arg itself) or "diff" (two args, a - b);
    ``modifier`` is None, "add" ("<c> more than ...") or "mul" ("<c> times ..."), with
    constant ``const``.
    """

    combine: Literal["const", "sum", "diff"]
    args: tuple[Param, ...] = ()
    modifier: Literal["add", "mul"] | None = None
    const: int | None = None

    def __post_init__(self) -> None:
        if self.combine == "const":
            ok = not self.args and self.modifier is None and self.const is not None
        elif self.combine == "sum":
            ok = len(self.args) >= 1
        else:
            ok = len(self.args) == 2
        if ok and self.modifier is not None:
            ok = self.const is not None
        if not ok:
            raise ValueError(f"inconsistent definition {self}")

    @cached_property
    def expr(self) -> Expr:
        """The definition as an expression over `Param` leaves."""
        if self.combine == "const":
            return self.const
        inner: Expr
        if self.combine == "diff":
            inner = Node("-", self.args)
        else:
            inner = self.args[0] if len(self.args) == 1 else Node("+", self.args)
        if self.modifier == "add":
            parts = inner.children if isinstance(inner, Node) and inner.op == "+" else (inner,)
            return Node("+", (*parts, self.const))
        if self.modifier == "mul":
            return Node("*", (self.const, inner))
        return inner

    @property
    def n_ops(self) -> int:
        return n_ops(self.expr)
