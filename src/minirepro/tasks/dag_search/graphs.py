"""Random DAGs of the two training distributions (after the reference's generator.cpp).

Both samplers build a graph on vertex *indices* 0..N-1, then map indices to random distinct
ids in 1..n (so topology and ids are uncorrelated) and return the edges in id space.

- naive: vertex i > 0 takes 1 parent with probability 1/2, else 1-3 parents, drawn
  uniformly among the earlier vertices; start and goal are two random distinct vertices.
- balanced (lookahead L): `num_paths` >= 2 branches leave the start, the first of length
  L ending at the goal, the others of length L or L+1; an optional chain of prefix
  vertices leads into the start; the remaining vertices attach preferentially (weight
  0.5 + degree) as parents and children of the existing ones, never closing a cycle.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Graph", "sample_balanced_graph", "sample_naive_graph"]

MAX_PARENTS = 4  # the reference's max_num_parents: randrange(1, 4) -> 1-3 parents
ALPHA = 0.5  # preferential attachment: weight ALPHA + degree

Graph = tuple[list[tuple[int, int]], int, int]
"""(edges as (parent id, child id), start id, goal id)."""


def _relabel(rng: np.random.Generator, n_vertices: int, n_ids: int) -> np.ndarray:
    """Random distinct ids in 1..n_ids for vertex indices 0..n_vertices-1."""
    return rng.permutation(n_ids)[:n_vertices] + 1


def sample_naive_graph(rng: np.random.Generator, n_ids: int, n_vertices: int) -> Graph:
    """A random DAG with a random start and goal (the goal may be unreachable).

    Args:
        rng: Source of randomness.
        n_ids: Vertex ids are drawn from 1..n_ids.
        n_vertices: Vertices in the graph, 2 <= n_vertices <= n_ids.
    """
    edges = []
    for i in range(1, n_vertices):
        k = 1 if rng.random() < 0.5 else int(rng.integers(1, MAX_PARENTS))
        for p in rng.choice(i, size=min(k, i), replace=False):
            edges.append((int(p), i))
    ids = _relabel(rng, n_vertices, n_ids)
    # as the reference: start and goal among all but the last-created vertex
    start = int(rng.integers(n_vertices - 1))
    goal = int(rng.integers(n_vertices - 2))
    goal += goal >= start
    return [(int(ids[u]), int(ids[v])) for u, v in edges], int(ids[start]), int(ids[goal])


def _descendants(children: list[list[int]], v: int) -> set[int]:
    seen: set[int] = set()
    stack = list(children[v])
    while stack:
        u = stack.pop()
        if u not in seen:
            seen.add(u)
            stack.extend(children[u])
    return seen


def _weighted_without_replacement(
    rng: np.random.Generator, weights: np.ndarray, k: int
) -> list[int]:
    out, w = [], weights.astype(np.float64).copy()
    for _ in range(k):
        total = w.sum()
        if total <= 0:
            break
        u = int(np.searchsorted(np.cumsum(w), rng.random() * total, side="right"))
        u = min(u, len(w) - 1)
        out.append(u)
        w[u] = 0.0
    return out


def sample_balanced_graph(
    rng: np.random.Generator, n_ids: int, lookahead: int, max_edges: int
) -> Graph:
    """A DAG built so that finding the next vertex from the start needs `lookahead` steps.

    The built-in lookahead can be changed by the randomly attached vertices; callers check
    the computed lookahead (`minirepro.tasks.dag_search.analysis.lookahead`) and reject
    mismatches, as the reference does.

    Args:
        rng: Source of randomness.
        n_ids: Vertex ids are drawn from 1..n_ids.
        lookahead: L >= 0; needs 2 * L + 1 <= min(n_ids, max_edges + 1).
        max_edges: The edge budget, which bounds the number of branches.
    """
    if lookahead == 0:
        num_paths = int(rng.integers(1, 3))
    else:
        num_paths = int(rng.integers(2, (max_edges - 1) // lookahead + 1))
    n = min(lookahead * num_paths + 1 + int(rng.integers(0, 6)), n_ids, max_edges + 1)
    n = max(2, n, 1 + num_paths * lookahead)
    children: list[list[int]] = [[] for _ in range(n)]
    parents: list[list[int]] = [[] for _ in range(n)]

    def link(u: int, v: int) -> None:
        children[u].append(v)
        parents[v].append(u)

    link(0, 1)
    for i in range(1, lookahead):
        link(i, i + 1)  # the goal branch 0 -> 1 -> ... -> L
    index = 2 if lookahead == 0 else 1 + lookahead
    if lookahead > 0:
        for j in range(num_paths - 1):  # the other branches, of length L or L + 1
            link(0, index)
            index += 1
            spare = n - index - (num_paths - j - 1) * lookahead + 2
            length = lookahead + int(rng.integers(max(1, min(2, spare))))
            for _ in range(1, length):
                if index >= n:
                    break
                link(index - 1, index)
                index += 1
    prev = 0
    for _ in range(int(rng.integers(n - index + 1))):  # a chain of prefix vertices into 0
        link(index, prev)
        prev = index
        index += 1
    in_deg = np.array([len(p) for p in parents], dtype=np.float64)
    out_deg = np.array([len(c) for c in children], dtype=np.float64)
    for i in range(index, n):
        n_children = int(rng.integers(0, MAX_PARENTS))
        n_parents = int(rng.integers(0 if n_children else 1, MAX_PARENTS))
        for c in _weighted_without_replacement(rng, ALPHA + in_deg[:i], min(n_children, i)):
            link(i, c)
            in_deg[c] += 1
        w = ALPHA + out_deg[:i]
        below = _descendants(children, i)  # no parent among the descendants: no cycle
        w[list(below)] = 0.0
        for p in _weighted_without_replacement(rng, w, min(n_parents, i - len(below))):
            link(p, i)
            out_deg[p] += 1
    ids = _relabel(rng, n, n_ids)
    edges = [(int(ids[u]), int(ids[v])) for u in range(n) for v in children[u]]
    return edges, int(ids[0]), int(ids[max(1, lookahead)])
