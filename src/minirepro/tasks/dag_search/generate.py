"""Batches of next-vertex examples from the naive or the balanced distribution.

Graphs are sampled one by one in Python (they are tiny); everything else — reachability,
shortest paths, the path walked so far, the lookahead of every step, the answer sets and
the token rows — is computed for the whole batch at once in numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from minirepro.tasks.dag_search.analysis import distances_to, lookahead, reachability
from minirepro.tasks.dag_search.graphs import sample_balanced_graph, sample_naive_graph
from minirepro.tasks.dag_search.vocab import SearchVocab

__all__ = ["DISTRIBUTIONS", "SearchBatch", "generate_batch", "numpy_rng"]

DISTRIBUTIONS = ("naive", "balanced")


@dataclass
class SearchBatch:
    """B examples of the next-vertex task.

    Attributes:
        tokens: (B, S) int64 inputs, left-padded (`SearchVocab` describes the format).
        answers: (B, vocab_size) bool, the correct next vertices (multi-hot).
        labels: (B,) int64, one correct next vertex drawn uniformly from `answers`.
        lookahead: (B,) int64, the lookahead of the step (`analysis.lookahead`).
        adjacency: (B, V, V) bool, V = n_ids + 1, indexed by vertex id.
        start, goal, current: (B,) int64 vertex ids (current: last vertex of the path).
        path_len: (B,) int64, vertices in the path so far (>= 1).
    """

    tokens: np.ndarray
    answers: np.ndarray
    labels: np.ndarray
    lookahead: np.ndarray
    adjacency: np.ndarray
    start: np.ndarray
    goal: np.ndarray
    current: np.ndarray
    path_len: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)

    def torch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, labels) as int64 tensors, ready for a training step."""
        return torch.from_numpy(self.tokens), torch.from_numpy(self.labels)


def numpy_rng(generator: torch.Generator | np.random.Generator | int | None):
    """A numpy Generator from a torch Generator (the core trainer's), a seed or a Generator."""
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, torch.Generator):
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    return np.random.default_rng(generator)


def _check(vocab: SearchVocab, distribution: str, lookaheads, max_edges: int) -> None:
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; choose one of {DISTRIBUTIONS}")
    if not 1 <= max_edges:
        raise ValueError(f"max_edges must be >= 1, got {max_edges}")
    if lookaheads is not None:
        if distribution != "balanced":
            raise ValueError("a requested lookahead needs distribution='balanced'")
        top = min(vocab.max_lookahead, (max_edges - 1) // 2)
        bad = [L for L in lookaheads if not 0 <= L <= top]
        if bad:
            raise ValueError(
                f"lookahead {bad} out of range: max_input_size={vocab.max_input_size} with "
                f"max_edges={max_edges} allows 0..{top}"
            )


def generate_batch(
    batch_size: int,
    max_input_size: int,
    distribution: str = "balanced",
    lookahead: int | Sequence[int] | None = None,
    *,
    max_lookahead: int | None = None,
    max_edges: int | None = None,
    rng: torch.Generator | np.random.Generator | int | None = None,
) -> SearchBatch:
    """Samples `batch_size` next-vertex examples.

    Args:
        batch_size: Examples to return.
        max_input_size: Tokens per input; fixes the vertex ids and the largest graph.
        distribution: "naive" (random DAGs, any step along a shortest path) or "balanced"
            (graphs built for a lookahead; only steps whose lookahead is the one asked for).
        lookahead: balanced only: one lookahead for every example, or several to draw from
            uniformly. Default: uniform over 0..max_lookahead.
        max_lookahead: balanced only: the largest lookahead drawn by default (default
            `SearchVocab.max_lookahead`).
        max_edges: Edge budget (default n_ids, the reference's for search).
        rng: torch or numpy generator, or a seed.

    Returns:
        A `SearchBatch`.
    """
    vocab = SearchVocab(max_input_size)
    max_edges = vocab.max_edges if max_edges is None else max_edges
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if lookahead is None and distribution == "balanced":
        top = vocab.max_lookahead if max_lookahead is None else max_lookahead
        lookaheads = list(range(top + 1))
    elif lookahead is None:
        lookaheads = None
    else:
        lookaheads = [lookahead] if isinstance(lookahead, (int, np.integer)) else list(lookahead)
        if not lookaheads:
            raise ValueError("lookahead must not be an empty sequence")
    _check(vocab, distribution, lookaheads, max_edges)
    rng = numpy_rng(rng)
    parts, have = [], 0
    for _ in range(1000):
        want = batch_size - have
        part = _attempt(rng, vocab, distribution, lookaheads, max_edges, want + want // 2 + 4)
        parts.append(part)
        have += len(part["tokens"])
        if have >= batch_size:
            break
    else:
        raise RuntimeError("the generator kept rejecting graphs; check max_edges and lookahead")
    cat = {k: np.concatenate([p[k] for p in parts])[:batch_size] for k in parts[0]}
    return SearchBatch(**cat)


def _sample_graphs(rng, vocab, distribution, lookaheads, max_edges, n):
    n_ids, graphs, wanted = vocab.n_ids, [], []
    for _ in range(1000 * n + 1000):
        if len(graphs) == n:
            break
        if distribution == "naive":
            edges, s, g = sample_naive_graph(rng, n_ids, int(rng.integers(3, n_ids)))
            L = -1
        else:
            L = int(lookaheads[int(rng.integers(len(lookaheads)))])
            edges, s, g = sample_balanced_graph(rng, n_ids, L, max_edges)
        if len(edges) > max_edges or 3 * len(edges) + 5 > vocab.max_input_size:
            continue
        graphs.append((edges, s, g))
        wanted.append(L)
    else:
        raise ValueError(
            f"max_edges={max_edges} and max_input_size={vocab.max_input_size} leave no room "
            f"for {distribution} graphs (nearly every sampled graph was too large)"
        )
    return graphs, np.array(wanted)


def _attempt(rng, vocab, distribution, lookaheads, max_edges, n) -> dict[str, np.ndarray]:
    """Samples n graphs and keeps the examples that meet the distribution's conditions."""
    graphs, wanted = _sample_graphs(rng, vocab, distribution, lookaheads, max_edges, n)
    V, B, rows = vocab.n_ids + 1, n, np.arange(n)
    adj = np.zeros((B, V, V), dtype=bool)
    for b, (edges, _, _) in enumerate(graphs):
        e = np.array(edges)
        adj[b, e[:, 0], e[:, 1]] = True
    start = np.array([s for _, s, _ in graphs])
    goal = np.array([g for _, _, g in graphs])
    dist = distances_to(adj, goal)  # (B, V)
    ok = dist[rows, start] >= 1

    # walk one random shortest path start -> goal, recording each step's lookahead
    steps = np.where(ok, dist[rows, start], 0)
    path = np.zeros((B, V), dtype=np.int64)
    path[:, 0] = start
    la = np.full((B, V), -2, dtype=np.int64)  # la[:, j-1]: lookahead of step j-1 -> j
    cur = start.copy()
    for j in range(1, int(steps.max(initial=0)) + 1):
        live = steps >= j
        on_path = adj[rows, cur] & (dist == (dist[rows, cur] - 1)[:, None])  # (B, V)
        nxt = _choose(rng, on_path)
        nxt = np.where(live, nxt, cur)
        la[:, j - 1] = np.where(live, lookahead(adj, cur, nxt, goal), -2)
        path[:, j] = nxt
        cur = nxt

    # choose the example's step j (path so far = path[:, :j]) among the allowed ones
    n_edges = adj.sum((1, 2))
    j_idx = np.arange(1, V + 1)[None, :]  # path length j for column j-1
    allowed = (la >= 0) & (3 * n_edges[:, None] + 4 + j_idx <= vocab.max_input_size)
    if distribution == "balanced":
        allowed &= la == wanted[:, None]
    allowed &= ok[:, None]
    keep = allowed.any(1)
    j = _choose(rng, allowed) + 1  # (B,) path lengths
    current = path[rows, j - 1]
    reach_goal = reachability(adj)[rows, :, goal] | (np.arange(V)[None, :] == goal[:, None])
    answers_v = adj[rows, current] & reach_goal  # (B, V)
    answers = np.zeros((B, vocab.vocab_size), dtype=bool)
    answers[:, :V] = answers_v
    labels = _choose(rng, answers_v)
    tokens = np.full((B, vocab.max_input_size), vocab.pad, dtype=np.int64)
    for b in np.flatnonzero(keep):
        edges, s, g = graphs[b]
        order = rng.permutation(len(edges))
        row = [t for k in order for t in (vocab.edge, *edges[k])]
        row += [vocab.query, s, g, vocab.path, *path[b, : j[b]].tolist()]
        tokens[b, -len(row) :] = row
    return {
        "tokens": tokens[keep],
        "answers": answers[keep],
        "labels": labels[keep],
        "lookahead": la[rows, j - 1][keep],
        "adjacency": adj[keep],
        "start": start[keep],
        "goal": goal[keep],
        "current": current[keep],
        "path_len": j[keep],
    }


def _choose(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """A uniformly random True column per row of mask (B, K); 0 for rows with none."""
    u = rng.random(mask.shape)
    return np.where(mask, u, -1.0).argmax(1)
