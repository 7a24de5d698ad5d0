"""Batched graph analysis in numpy: reachability, distances, lookahead.

Graphs are boolean adjacency matrices `adj` of shape (B, V, V) indexed by vertex id
(`adj[b, u, v]` is the edge u -> v); every function works on a whole batch at once, with a
Python loop only over path lengths (at most V), never over examples.
"""

from __future__ import annotations

import numpy as np

__all__ = ["all_distances", "distances_to", "lookahead", "reachability", "step"]


def step(frontier: np.ndarray, adj: np.ndarray) -> np.ndarray:
    """Children of a set of vertices: frontier (B, V) bool -> (B, V) bool."""
    return np.einsum("bu,buv->bv", frontier.astype(np.float32), adj.astype(np.float32)) > 0


def reachability(adj: np.ndarray) -> np.ndarray:
    """Transitive closure: (B, V, V) bool, True where v is reachable from u in >= 1 edge."""
    r = adj.astype(np.float32)
    for _ in range(max(1, int(np.ceil(np.log2(max(2, adj.shape[1])))))):
        r = np.maximum(r, np.matmul(r, r) > 0).astype(np.float32)
    return r > 0


def distances_to(adj: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Shortest distance from every vertex to `target` (B,): (B, V) int, -1 if unreachable."""
    B, V, _ = adj.shape
    dist = np.full((B, V), -1, dtype=np.int64)
    level = np.zeros((B, V), dtype=bool)
    level[np.arange(B), target] = True
    dist[level] = 0
    rev = adj.transpose(0, 2, 1)
    for d in range(1, V):
        level = step(level, rev) & (dist < 0)
        if not level.any():
            break
        dist[level] = d
    return dist


def lookahead(adj: np.ndarray, vertex: np.ndarray, next_vertex: np.ndarray, goal: np.ndarray):
    """How many steps of search from `vertex` it takes to know that `next_vertex` is right.

    The reference's definition (`lookahead_depth`): a breadth-first search starts from the
    children of `vertex`, each frontier vertex tagged with the child (branch) it descends
    from; a vertex reached from the `next_vertex` branch takes that tag. The lookahead is
    the number of expansions until either every frontier vertex belongs to the
    `next_vertex` branch (the other branches died out), or the goal is on the frontier.

    Args:
        adj: (B, V, V) bool adjacency.
        vertex: (B,) the current vertex (last of the path so far).
        next_vertex: (B,) the child taken next.
        goal: (B,) the goal.

    Returns:
        (B,) int64 lookahead.
    """
    B, V, _ = adj.shape
    rows = np.arange(B)
    frontier = adj[rows, vertex].copy()  # (B, V)
    on_next = np.zeros_like(frontier)
    on_next[rows, next_vertex] = frontier[rows, next_vertex]
    visited = frontier.copy()
    out = np.full(B, -1, dtype=np.int64)
    depth = 0
    for _ in range(V + 1):
        open_ = out < 0
        all_next = ~(frontier & ~on_next).any(1)  # an empty frontier counts, as in the reference
        out[open_ & all_next] = depth
        depth += 1
        open_ = out < 0
        out[open_ & frontier[rows, goal]] = depth
        if (out >= 0).all():
            break
        new = step(frontier, adj) & ~visited
        on_next = step(on_next, adj) & new
        visited |= new
        frontier = new
    return out


def all_distances(adj: np.ndarray) -> np.ndarray:
    """Shortest distances between all pairs: (B, V, V) int, [b, u, v] = edges from u to v,
    0 on the diagonal, -1 where v is unreachable from u."""
    B, V, _ = adj.shape
    dist = np.full((B, V, V), -1, dtype=np.int64)
    eye = np.broadcast_to(np.eye(V, dtype=bool), (B, V, V))
    dist[eye] = 0
    level, a = eye.astype(np.float32), adj.astype(np.float32)
    for d in range(1, V):
        level = (np.matmul(level, a) > 0) & (dist < 0)
        if not level.any():
            break
        dist[level] = d
        level = level.astype(np.float32)
    return dist
