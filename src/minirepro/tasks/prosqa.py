"""ProsQA-style problems: is a person an A or a B, given a DAG of made-up concepts.

ProsQA (Coconut, arXiv 2412.06769, Sec. 4.1) asks "Is Tom a wumpus or a yumpus?" after a
list of facts that form a directed acyclic graph: "Every lempus is a scrompus.", "Tom is a
lempus.". Exactly one option is reachable from the person; the reasoning chain is the path
to it, one sentence per edge. The paper's generator was not released; this one matches the
statistics the paper reports:

- 14-28 nodes per graph (mean about 23, the person included), about 36 edges;
- 17 person names and a shared vocabulary of made-up "-pus" concepts;
- the chain (a shortest path from the person to the answer) has 3-6 steps;
- the correct option comes first in about half of the questions.

Records are the reference's JSON (facebookresearch/coconut, ``data/prosqa_*.json``)::

    {"question": "... Is Tom a yumpus or a wumpus?", "answer": "Tom is a wumpus.",
     "steps": ["Tom is a lempus.", "Every lempus is a ...", ...],
     "edges": [[0, 5], ...], "root": 12, "target": 5, "neg_target": 9,
     "idx_to_symbol": ["lempus", ..., "Tom", ...]}

``edges`` are ``[parent, child]`` indices into ``idx_to_symbol``; ``root`` is the person.
`load_prosqa` reads such a file (the reference's own, or one `save_prosqa` wrote) and
rejects a malformed record with a ValueError naming the record and the field.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CONCEPTS",
    "NAMES",
    "ProsQAConfig",
    "bfs_depths",
    "check_record",
    "generate_problem",
    "generate_prosqa",
    "load_prosqa",
    "options",
    "save_prosqa",
    "solve",
]

NAMES: tuple[str, ...] = (
    "Alex", "Bob", "Davis", "Fae", "Gary", "Jack", "Jane", "Max", "Polly", "Rex",
    "Sally", "Sam", "Stella", "Tom", "Wren", "Lisa", "Sara",
)  # fmt: skip
"""The 17 person names (ProsQA uses 17)."""

_ONSETS = ("b", "br", "d", "f", "g", "gr", "j", "l", "r", "s", "sc", "sh", "st", "t", "w", "y", "z")
_NUCLEI = ("e", "i", "o", "u", "a")
_CODAS = ("mpus", "rpus")
CONCEPTS: tuple[str, ...] = tuple(
    sorted({o + n + c for o in _ONSETS for n in _NUCLEI for c in _CODAS})
)[::3]
"""Made-up concept words in the style of ProsQA ("lempus", "scrompus"): 57 of them."""

_KEYS = ("question", "answer", "steps", "edges", "root", "target", "neg_target", "idx_to_symbol")


@dataclass(frozen=True)
class ProsQAConfig:
    """Sizes of the generated graphs.

    Attributes:
        n_nodes: (min, max) nodes per graph, the person included. Drawn from a triangular
            distribution with mode ``mode_nodes`` ("14-28 nodes", mean about 23).
        mode_nodes: Mode of that distribution; None uses the maximum.
        n_steps: (min, max) length of the reasoning chain ("3-6 steps").
        edges_per_node: Edges per node (ProsQA: about 36 edges for 23 nodes).
        names: Person names to draw from.
        concepts: Concept words to draw from; needs ``n_nodes[1] - 1`` of them.
    """

    n_nodes: tuple[int, int] = (14, 28)
    mode_nodes: int | None = 27  # triangular(14, 28, 27) has mean 23
    n_steps: tuple[int, int] = (3, 6)
    edges_per_node: float = 1.55
    names: tuple[str, ...] = NAMES
    concepts: tuple[str, ...] = CONCEPTS

    def __post_init__(self) -> None:
        lo, hi = self.n_nodes
        s_lo, s_hi = self.n_steps
        if not 1 <= s_lo <= s_hi:
            raise ValueError(f"n_steps must be (min, max) with 1 <= min <= max, got {self.n_steps}")
        # a chain of s steps and a disjoint distractor chain need 2s + 1 nodes
        if not 2 * s_hi + 1 <= lo <= hi:
            raise ValueError(
                f"n_nodes must be (min, max) with 2 * max steps + 1 = {2 * s_hi + 1} <= min "
                f"<= max, got {self.n_nodes}"
            )
        if self.mode_nodes is not None and not lo <= self.mode_nodes <= hi:
            raise ValueError(f"mode_nodes={self.mode_nodes} outside n_nodes={self.n_nodes}")
        if self.edges_per_node < 1.0:
            raise ValueError(f"edges_per_node must be >= 1, got {self.edges_per_node}")
        if len(set(self.concepts)) < hi - 1:
            raise ValueError(f"{hi - 1} distinct concepts needed, got {len(set(self.concepts))}")
        if not self.names:
            raise ValueError("names must not be empty")


# --------------------------------------------------------------------------- graph search


def _children(n: int, edges: Sequence[Sequence[int]]) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        out[a].append(b)
    return out


def bfs_depths(n: int, edges: Sequence[Sequence[int]], root: int) -> list[int]:
    """Shortest number of edges from ``root`` to every node; -1 where unreachable."""
    depth = [-1] * n
    depth[root] = 0
    children, queue = _children(n, edges), deque([root])
    while queue:
        a = queue.popleft()
        for b in children[a]:
            if depth[b] < 0:
                depth[b] = depth[a] + 1
                queue.append(b)
    return depth


def _shortest_path(n: int, edges: Sequence[Sequence[int]], root: int, goal: int) -> list[int]:
    parent = {root: root}
    children, queue = _children(n, edges), deque([root])
    while queue:
        a = queue.popleft()
        for b in children[a]:
            if b not in parent:
                parent[b] = a
                queue.append(b)
    if goal not in parent:
        return []
    path = [goal]
    while path[-1] != root:
        path.append(parent[path[-1]])
    return path[::-1]


def options(record: dict[str, Any]) -> tuple[str, str]:
    """The two concepts the question offers: (target, neg_target) as words."""
    sym = record["idx_to_symbol"]
    return sym[record["target"]], sym[record["neg_target"]]


def solve(record: dict[str, Any]) -> str:
    """The option reachable from the person, found by graph search on the record's edges.

    Returns:
        The answer sentence, "<person> is a <concept>.".

    Raises:
        ValueError: if neither or both options are reachable.
    """
    sym = record["idx_to_symbol"]
    depth = bfs_depths(len(sym), record["edges"], record["root"])
    reach = [i for i in (record["target"], record["neg_target"]) if depth[i] >= 0]
    if len(reach) != 1:
        raise ValueError(f"{len(reach)} of the two options are reachable from the person")
    return f"{sym[record['root']]} is a {sym[reach[0]]}."


# --------------------------------------------------------------------------- generation


def generate_problem(rng: random.Random, cfg: ProsQAConfig = ProsQAConfig()) -> dict[str, Any]:
    """One ProsQA-style record drawn with ``rng``.

    The graph holds two disjoint node sets: R, reachable from the person (the chain to the
    target and branches off it), and U (the distractor chain to neg_target and its
    branches). Edges follow a random topological order and never lead from R into U, so
    the target is reachable and neg_target is not; U -> R edges make the graph harder to
    read without changing that. The steps are a shortest path to the target.
    """
    while True:  # resample until the shortest chain has an allowed length
        record = _draw(rng, cfg)
        if cfg.n_steps[0] <= len(record["steps"]) <= cfg.n_steps[1]:
            return record


def _draw(rng: random.Random, cfg: ProsQAConfig) -> dict[str, Any]:
    lo, hi = cfg.n_nodes
    n = min(hi, max(lo, round(rng.triangular(lo, hi, cfg.mode_nodes or hi))))
    depth = rng.randint(*cfg.n_steps)
    order = {0: 0.0}  # node -> topological key; node 0 is the person
    reach, unreach, edges = [0], [], set()
    for i in range(1, depth + 1):  # the chain 0 -> 1 -> ... -> depth (the target)
        order[i] = float(i)
        reach.append(i)
        edges.add((i - 1, i))
    nxt = depth + 1
    neg_len = min(n - depth - 1, max(1, depth + rng.choice((-1, 0, 0, 1))))
    for j in range(neg_len):  # distractor chain ending in neg_target
        order[nxt] = j + rng.uniform(0.2, 0.8)
        if j:
            edges.add((nxt - 1, nxt))
        unreach.append(nxt)
        nxt += 1
    target, neg_target = depth, nxt - 1
    for v in range(nxt, n):  # branches: hang each extra node under one of its side
        side = reach if rng.random() < 0.5 else unreach
        parent = rng.choice(side)
        order[v] = order[parent] + rng.uniform(0.3, 1.7)
        edges.add((parent, v))
        side.append(v)
    in_r = set(reach)
    n_edges = max(len(edges), round(cfg.edges_per_node * n))
    for _ in range(50 * n):
        if len(edges) >= n_edges:
            break
        a, b = rng.sample(range(n), 2)
        if order[a] > order[b]:
            a, b = b, a
        # never R -> U (U must stay unreachable), never into the person, never a shortcut
        # from the person straight to the target
        if b == 0 or (a in in_r and b not in in_r) or (a, b) == (0, target):
            continue
        edges.add((a, b))
    perm = list(range(n))
    rng.shuffle(perm)  # perm[internal] -> record index
    name = rng.choice(cfg.names)
    words = rng.sample(cfg.concepts, n - 1)
    symbols = [""] * n
    symbols[perm[0]] = name
    for v in range(1, n):
        symbols[perm[v]] = words[v - 1]
    rec_edges = sorted([perm[a], perm[b]] for a, b in edges)
    root = perm[0]
    path = _shortest_path(n, rec_edges, root, perm[target])

    def sentence(a: int, b: int) -> str:
        head = symbols[a] if a == root else f"Every {symbols[a]}"
        return f"{head} is a {symbols[b]}."

    facts = [sentence(a, b) for a, b in rec_edges]
    rng.shuffle(facts)
    first, second = symbols[perm[target]], symbols[perm[neg_target]]
    if rng.random() < 0.5:
        first, second = second, first
    return {
        "question": " ".join(facts) + f" Is {name} a {first} or {second}?",
        "answer": f"{name} is a {symbols[perm[target]]}.",
        "steps": [sentence(a, b) for a, b in zip(path, path[1:])],
        "edges": rec_edges,
        "root": root,
        "target": perm[target],
        "neg_target": perm[neg_target],
        "idx_to_symbol": symbols,
    }


def generate_prosqa(n: int, seed: int, cfg: ProsQAConfig = ProsQAConfig()) -> list[dict[str, Any]]:
    """``n`` records from a generator seeded by ``seed`` alone (same seed, same records)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"prosqa:{seed}")
    return [generate_problem(rng, cfg) for _ in range(n)]


# --------------------------------------------------------------------------- files


def check_record(record: Any, where: str = "record") -> dict[str, Any]:
    """Validate one ProsQA record and return it normalised (``idx_to_symbol`` as a list).

    Args:
        record: A parsed JSON object.
        where: How error messages name the record, e.g. "prosqa_test.json: record 7".

    Raises:
        ValueError: naming the record and the field that is missing, mistyped, out of
            range, or inconsistent (target unreachable, neg_target reachable).
    """

    def fail(msg: str) -> ValueError:
        return ValueError(f"{where}: {msg}")

    if not isinstance(record, dict):
        raise fail(f"expected a JSON object, got {type(record).__name__}")
    missing = [k for k in _KEYS if k not in record]
    if missing:
        raise fail(f"missing field(s) {missing}")
    for key in ("question", "answer"):
        if not isinstance(record[key], str) or not record[key].strip():
            raise fail(f"field {key!r} must be a non-empty string")
    steps = record["steps"]
    if not isinstance(steps, list) or not all(isinstance(s, str) and s.strip() for s in steps):
        raise fail("field 'steps' must be a list of non-empty strings")
    sym = record["idx_to_symbol"]
    if isinstance(sym, dict):  # {"0": "x", ...} also occurs; make it a list
        try:
            sym = [sym[str(i)] for i in range(len(sym))]
        except KeyError:
            raise fail("field 'idx_to_symbol' as an object needs keys '0'..'n-1'") from None
    if not isinstance(sym, list) or not sym or not all(isinstance(s, str) and s for s in sym):
        raise fail("field 'idx_to_symbol' must be a non-empty list of strings")
    n = len(sym)
    for key in ("root", "target", "neg_target"):
        v = record[key]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
            raise fail(f"field {key!r} must be a node index in [0, {n}), got {v!r}")
    edges = record["edges"]
    if not isinstance(edges, list):
        raise fail("field 'edges' must be a list of [parent, child] pairs")
    for e in edges:
        ok = isinstance(e, (list, tuple)) and len(e) == 2
        if not ok or not all(isinstance(v, int) and not isinstance(v, bool) for v in e):
            raise fail(f"field 'edges' holds {e!r}, not a [parent, child] pair of ints")
        if not all(0 <= v < n for v in e):
            raise fail(f"field 'edges' holds {list(e)}, outside the {n} nodes")
    depth = bfs_depths(n, edges, record["root"])
    if depth[record["target"]] < 0:
        raise fail("field 'target' is not reachable from 'root' along 'edges'")
    if depth[record["neg_target"]] >= 0:
        raise fail("field 'neg_target' is reachable from 'root' along 'edges'")
    if sym[record["target"]] not in record["answer"]:
        raise fail(f"field 'answer' does not name the target {sym[record['target']]!r}")
    return {**record, "idx_to_symbol": sym, "edges": [list(e) for e in edges]}


def load_prosqa(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Read a ProsQA JSON file: a list of records (the reference's ``data/prosqa_*.json``).

    Args:
        path: The file.
        limit: Read at most this many records.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not JSON, not a list, or holds a malformed record (named
            by its index and field).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a JSON file ({exc})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    data = data[:limit] if limit is not None else data
    return [check_record(r, f"{path.name}: record {i}") for i, r in enumerate(data)]


def save_prosqa(records: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Write records as the reference's JSON list."""
    Path(path).write_text(json.dumps(list(records), indent=1), encoding="utf-8")
