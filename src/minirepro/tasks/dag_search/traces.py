"""In-context exploration variants: depth-first search and selection-inference traces.

The input is the same graph and query, then the trace of the search so far instead of a
path; the target is the next vertex the search may visit (multi-hot: every valid choice).

- dfs: vertices in the order a depth-first search visits them (backtracking is implicit:
  after a dead end the search continues from the deepest visited vertex that still has
  unvisited children). The valid next vertices are the unvisited children of that vertex,
  or only the goal when it is one of them.
- si (selection-inference): at each step any unvisited child of any visited vertex (the
  frontier) may be selected; the valid next vertices are the whole frontier, or only the
  goal when it is on it.

Traces are sequential by nature and are built one example at a time in Python.
"""

from __future__ import annotations

import numpy as np

from minirepro.tasks.dag_search.generate import SearchBatch, numpy_rng
from minirepro.tasks.dag_search.graphs import sample_naive_graph
from minirepro.tasks.dag_search.vocab import SearchVocab

__all__ = ["TRACE_KINDS", "generate_trace_batch", "valid_next"]

TRACE_KINDS = ("dfs", "si")


def valid_next(kind: str, children: dict[int, list[int]], trace: list[int], goal: int) -> set[int]:
    """The vertices a `kind` search may visit after `trace` (starting at trace[0])."""
    seen = set(trace)
    if kind == "dfs":
        options: set[int] = set()
        stack = _dfs_stack(children, trace)
        if stack:
            options = {c for c in children.get(stack[-1], []) if c not in seen}
    elif kind == "si":
        options = {c for v in trace for c in children.get(v, []) if c not in seen}
    else:
        raise ValueError(f"unknown trace kind {kind!r}; choose one of {TRACE_KINDS}")
    return {goal} if goal in options else options


def _dfs_stack(children: dict[int, list[int]], trace: list[int]) -> list[int]:
    """The DFS stack after visiting `trace`, popped down to a vertex with unvisited children."""
    seen, stack = set(), []
    for v in trace:
        while stack and v not in children.get(stack[-1], []):
            stack.pop()
        stack.append(v)
        seen.add(v)
    while stack and all(c in seen for c in children.get(stack[-1], [])):
        stack.pop()
    return stack


def generate_trace_batch(
    batch_size: int,
    max_input_size: int,
    kind: str = "dfs",
    *,
    max_edges: int | None = None,
    rng=None,
) -> SearchBatch:
    """Examples whose input ends with a search trace (see the module docstring).

    Graphs come from the naive distribution; each example stops the trace at a random
    step before the goal is visited. `lookahead` is -1 (not defined for traces) and
    `path_len` is the trace length.
    """
    if kind not in TRACE_KINDS:
        raise ValueError(f"unknown trace kind {kind!r}; choose one of {TRACE_KINDS}")
    vocab = SearchVocab(max_input_size)
    max_edges = vocab.max_edges if max_edges is None else max_edges
    rng = numpy_rng(rng)
    V = vocab.n_ids + 1
    rows: dict[str, list] = {k: [] for k in SearchBatch.__dataclass_fields__}
    for _ in range(1000 * batch_size + 1000):
        if len(rows["tokens"]) == batch_size:
            break
        edges, s, g = sample_naive_graph(rng, vocab.n_ids, int(rng.integers(3, vocab.n_ids)))
        if len(edges) > max_edges:
            continue
        children: dict[int, list[int]] = {}
        for u, v in edges:
            children.setdefault(u, []).append(v)
        trace, steps = [s], []
        while True:
            options = valid_next(kind, children, trace, g)
            if not options:
                break
            steps.append((list(trace), options))
            if g in options:
                break
            trace.append(int(rng.choice(sorted(options))))
        if not steps or g not in steps[-1][1]:
            continue  # the goal is unreachable: no example
        prefix, options = steps[int(rng.integers(len(steps)))]
        order = rng.permutation(len(edges))
        row = [t for k in order for t in (vocab.edge, *edges[k])]
        row += [vocab.query, s, g, vocab.path, *prefix]
        if len(row) > max_input_size:
            continue
        tokens = np.full(max_input_size, vocab.pad, dtype=np.int64)
        tokens[-len(row) :] = row
        answers = np.zeros(vocab.vocab_size, dtype=bool)
        answers[list(options)] = True
        adj = np.zeros((V, V), dtype=bool)
        e = np.array(edges)
        adj[e[:, 0], e[:, 1]] = True
        for key, value in [
            ("tokens", tokens), ("answers", answers),
            ("labels", int(rng.choice(sorted(options)))), ("lookahead", -1),
            ("adjacency", adj), ("start", s), ("goal", g), ("current", prefix[-1]),
            ("path_len", len(prefix)),
        ]:  # fmt: skip
            rows[key].append(value)
    else:
        raise ValueError(
            f"max_edges={max_edges} and max_input_size={max_input_size} leave no room for "
            f"{kind} traces (nearly every sampled graph was too large)"
        )
    return SearchBatch(**{k: np.array(v) for k, v in rows.items()})
