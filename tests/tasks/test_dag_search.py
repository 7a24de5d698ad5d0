"""The DAG search task: format, distributions, lookahead, answer sets, traces."""

from __future__ import annotations

import numpy as np
import pytest

from minirepro.tasks.dag_search import (
    SearchVocab,
    generate_batch,
    generate_trace_batch,
    lookahead,
    valid_next,
)


def _graph(adj_row: np.ndarray) -> dict[int, list[int]]:
    return {int(u): [int(v) for v in np.flatnonzero(adj_row[u])] for u in range(len(adj_row))}


def _reachable(children: dict[int, list[int]], u: int) -> set[int]:
    seen, stack = set(), list(children[u])
    while stack:
        v = stack.pop()
        if v not in seen:
            seen.add(v)
            stack.extend(children[v])
    return seen


def _lookahead_oracle(children, vertex, nxt, goal) -> int:
    """The reference's definition, one example at a time with lists (frontier of
    (vertex, branch) pairs; the next-vertex branch wins ties within a level)."""
    frontier = [(c, c) for c in children[vertex]]
    visited = set(children[vertex])
    depth = 0
    while frontier:
        if all(b == nxt for _, b in frontier):
            return depth
        depth += 1
        new = []
        for v, b in frontier:
            if v == goal:
                return depth
            for c in children[v]:
                if c not in visited:
                    new.append([c, b])
                    visited.add(c)
                elif b == nxt:
                    for e in new:
                        if e[0] == c:
                            e[1] = b
        frontier = [tuple(e) for e in new]
    return depth


def _parse(tokens: np.ndarray, vocab: SearchVocab):
    row = [int(t) for t in tokens if t != vocab.pad]
    q = row.index(vocab.query)
    edges = [tuple(row[i + 1 : i + 3]) for i in range(0, q, 3)]
    assert all(row[i] == vocab.edge for i in range(0, q, 3))
    start, goal = row[q + 1], row[q + 2]
    assert row[q + 3] == vocab.path
    return edges, start, goal, row[q + 4 :]


@pytest.mark.parametrize("size", [23, 32])
def test_balanced_lookahead_and_answers_are_exact(size):
    vocab = SearchVocab(size)
    rng = np.random.default_rng(7)
    for L in range(vocab.max_lookahead + 1):
        b = generate_batch(60, size, "balanced", L, rng=rng)
        assert (b.lookahead == L).all()
        for i in range(len(b)):
            edges, s, g, path = _parse(b.tokens[i], vocab)
            children = {v: [] for v in range(vocab.n_ids + 1)}
            for u, v in edges:
                children[u].append(v)
            assert sorted(edges) == sorted(zip(*np.nonzero(b.adjacency[i])))
            assert path[0] == s and b.current[i] == path[-1] and len(path) == b.path_len[i]
            assert all(v in children[u] for u, v in zip(path, path[1:]))  # a real path
            cur = path[-1]
            useful = {c for c in children[cur] if c == g or g in _reachable(children, c)}
            assert set(np.flatnonzero(b.answers[i])) == useful and useful
            assert b.labels[i] in useful
            # some correct next vertex has the requested lookahead under the oracle
            assert L in {_lookahead_oracle(children, cur, n, g) for n in useful}


def test_batched_lookahead_matches_the_oracle_on_random_graphs():
    rng = np.random.default_rng(3)
    b = generate_batch(300, 32, "naive", rng=rng)
    adj = b.adjacency
    nxt = b.labels
    got = lookahead(adj, b.current, nxt, b.goal)
    for i in range(len(b)):
        children = _graph(adj[i])
        assert got[i] == _lookahead_oracle(children, int(b.current[i]), int(nxt[i]), int(b.goal[i]))


def test_naive_and_balanced_lookahead_statistics_differ():
    vocab = SearchVocab(32)
    top = vocab.max_lookahead
    naive = generate_batch(3000, 32, "naive", rng=0).lookahead
    bal = generate_batch(3000, 32, "balanced", rng=0).lookahead
    naive_hist = np.bincount(naive, minlength=top + 1) / len(naive)
    bal_hist = np.bincount(bal, minlength=top + 1)[: top + 1] / len(bal)
    # naive: mostly lookahead <= 1, the largest lookaheads almost never occur
    assert naive_hist[:2].sum() > 0.8
    assert naive_hist[top:].sum() < 0.02
    # balanced: every lookahead 0..top about equally often, nothing beyond
    assert bal.max() == top
    assert (np.abs(bal_hist - 1 / (top + 1)) < 0.5 / (top + 1)).all()


def test_format_vocab_and_determinism():
    vocab = SearchVocab(32)
    assert (vocab.n_ids, vocab.vocab_size, vocab.max_lookahead) == (9, 14, 4)
    assert (vocab.path, vocab.edge, vocab.pad, vocab.query) == (10, 11, 12, 13)
    a = generate_batch(16, 32, "naive", rng=5)
    b = generate_batch(16, 32, "naive", rng=5)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert a.tokens.shape == (16, 32) and a.tokens.max() < vocab.vocab_size
    assert (a.tokens[:, 0] == vocab.pad).any()  # left-padded
    assert not (a.tokens == 0).any()  # id 0 is reserved


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(distribution="bfs"), "unknown distribution"),
        (dict(lookahead=5), "lookahead \\[5\\] out of range"),
        (dict(lookahead=-1), "out of range"),
        (dict(distribution="naive", lookahead=1), "needs distribution='balanced'"),
        (dict(lookahead=[]), "empty"),
    ],
)
def test_bad_requests_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_batch(4, 32, **kwargs)


def test_too_small_input_is_rejected():
    with pytest.raises(ValueError, match="max_input_size must be an int >= 17"):
        generate_batch(4, 16)
    with pytest.raises(ValueError, match="batch_size"):
        generate_batch(0, 32)
    with pytest.raises(ValueError, match="max_edges=1 .* no room for naive graphs"):
        generate_batch(4, 32, "naive", max_edges=1)
    with pytest.raises(ValueError, match="no room for dfs traces"):
        generate_trace_batch(4, 32, "dfs", max_edges=1)
    for size in (17, 18, 19):  # the smallest sizes work for every generator
        assert len(generate_batch(8, size, "naive", rng=0)) == 8
        assert len(generate_batch(8, size, "balanced", rng=0)) == 8
        assert len(generate_trace_batch(8, size, "si", rng=0)) == 8


def test_trace_valid_next_on_a_hand_built_graph():
    #   1 -> 2 -> 3 (dead end);  1 -> 4 -> 5 (goal);  2 -> 6 (dead end)
    children = {1: [2, 4], 2: [3, 6], 4: [5]}
    assert valid_next("dfs", children, [1], 5) == {2, 4}
    assert valid_next("dfs", children, [1, 2], 5) == {3, 6}
    assert valid_next("dfs", children, [1, 2, 3], 5) == {6}  # backtrack to 2
    assert valid_next("dfs", children, [1, 2, 3, 6], 5) == {4}  # backtrack to 1
    assert valid_next("dfs", children, [1, 2, 3, 6, 4], 5) == {5}
    assert valid_next("si", children, [1, 2], 5) == {3, 4, 6}  # the whole frontier
    assert valid_next("si", children, [1, 4], 5) == {5}  # the goal once it is on it
    with pytest.raises(ValueError, match="unknown trace kind"):
        valid_next("bfs", children, [1], 5)


@pytest.mark.parametrize("kind", ["dfs", "si"])
def test_trace_batches_are_consistent(kind):
    vocab = SearchVocab(32)
    b = generate_trace_batch(40, 32, kind, rng=1)
    for i in range(len(b)):
        edges, s, g, trace = _parse(b.tokens[i], vocab)
        children: dict[int, list[int]] = {}
        for u, v in edges:
            children.setdefault(u, []).append(v)
        assert trace[0] == s and len(set(trace)) == len(trace)
        assert set(np.flatnonzero(b.answers[i])) == valid_next(kind, children, trace, g)
        assert b.labels[i] in set(np.flatnonzero(b.answers[i]))
