"""What each layer knows: a linear probe for reachable sets, and the reachable radius.

For every edge ``E u v`` of an input, the probe reads the residual stream at the position of
the token ``v`` after each layer and predicts, for every vertex id w, whether w is reachable
from v through the edges listed so far (this edge and those before it: a causal model
cannot know about later ones). A least-squares (ridge) linear map per layer is fitted on one set of examples and
scored on another. For each distance d, the recall is the fraction of vertices at exactly d
edges from v that the probe marks reachable; the false-positive rate is over the graph's
vertices not reachable from v. The *reachable radius* of a layer is the largest d such that
the recall at every distance 1..d is at least `threshold` while the false-positive rate
stays at most 1 - threshold (0 if not even the children are known).

The paper's mechanism ("exponential path-merging") predicts the radius to double per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from minirepro.tasks.dag_search import SearchBatch, SearchVocab, all_distances

__all__ = [
    "ProbeResult",
    "edge_target_positions",
    "layer_states",
    "probe_targets",
    "radius_growth",
    "reachability_probe",
]


@torch.no_grad()
def layer_states(model: nn.Module, tokens: Tensor | np.ndarray) -> list[Tensor]:
    """Residual stream of a core `Transformer` after the embedding and after each block.

    Args:
        model: A `minirepro.core.model.Transformer`.
        tokens: (B, S) token ids.

    Returns:
        n_layer + 1 tensors of shape (B, S, d_model).
    """
    if isinstance(tokens, np.ndarray):
        tokens = torch.from_numpy(tokens)
    states: list[Tensor] = []
    hooks = [model.embed.register_forward_hook(lambda m, i, o: states.append(o.detach()))]
    for block in model.layers:
        hooks.append(block.register_forward_hook(lambda m, i, o: states.append(o.detach())))
    try:
        model.eval()
        model(tokens)
    finally:
        for h in hooks:
            h.remove()
    return states


def edge_target_positions(tokens: np.ndarray, vocab: SearchVocab) -> tuple[np.ndarray, ...]:
    """(row, position, vertex) of every edge's target token ``v`` in ``E u v``."""
    is_edge = tokens[:, :-2] == vocab.edge  # (B, S-2)
    rows, pos = np.nonzero(is_edge)
    pos = pos + 2
    return rows, pos, tokens[rows, pos]


@dataclass
class ProbeResult:
    """Per-layer probe scores (layer 0 is the embedding).

    Attributes:
        recall: (n_states, max_distance) recall at distance d = column + 1.
        false_positive_rate: (n_states,) over vertices in the graph not reachable.
        radius: (n_states,) reachable radius per layer.
        counts: (max_distance,) test pairs at each distance.
        threshold: The recall level that defines the radius.
    """

    recall: np.ndarray
    false_positive_rate: np.ndarray
    radius: np.ndarray
    counts: np.ndarray
    threshold: float

    @property
    def max_distance(self) -> int:
        """The largest distance with test pairs (the radius cannot exceed it)."""
        nz = np.flatnonzero(self.counts)
        return int(nz[-1] + 1) if len(nz) else 0


def probe_targets(batch: SearchBatch, vocab: SearchVocab) -> tuple[np.ndarray, ...]:
    """What the probe should read at each edge-target token.

    Returns:
        rows, pos: (N,) the example and position of every edge's ``v`` token.
        dist: (N, V) distance from v to each vertex id in the graph of the edges up to
            and including this one; -1 where unreachable.
        in_graph: (N, V) the vertex ids of the whole graph.
    """
    rows, pos, v = edge_target_positions(batch.tokens, vocab)
    u = batch.tokens[rows, pos - 1]
    V = vocab.n_ids + 1
    prefix = np.zeros((len(rows), V, V), dtype=bool)
    first = np.searchsorted(rows, rows)  # index of the row's first edge (rows are sorted)
    for i in range(len(rows)):
        prefix[i, u[first[i] : i + 1], v[first[i] : i + 1]] = True
    dist = all_distances(prefix)[np.arange(len(rows)), v]  # (N, V)
    in_graph = batch.adjacency.any(1) | batch.adjacency.any(2)  # (B, V)
    return rows, pos, dist, in_graph[rows]


def _features(states: list[Tensor], rows: np.ndarray, pos: np.ndarray) -> list[np.ndarray]:
    out = []
    for h in states:
        f = h[torch.from_numpy(rows), torch.from_numpy(pos)].double().numpy()  # (N, d)
        out.append(np.concatenate([f, np.ones((len(f), 1))], axis=1))
    return out


def reachability_probe(
    train_states: list[Tensor],
    train_batch: SearchBatch,
    test_states: list[Tensor],
    test_batch: SearchBatch,
    max_input_size: int,
    threshold: float = 0.9,
    ridge: float = 1e-3,
) -> ProbeResult:
    """Fits one linear probe per layer on train and scores it on test.

    Args:
        train_states, test_states: Per-layer states (B, S, d) of the two batches'
            tokens, e.g. from `layer_states`; any representation works (the tests use
            hand-built ones whose answer is known).
        train_batch, test_batch: The examples (tokens and graphs).
        max_input_size: The task's sequence length (for the token ids).
        threshold: Recall needed at every distance up to the radius.
        ridge: L2 penalty of the least-squares fit, relative to the mean feature energy.
    """
    if len(train_states) != len(test_states):
        raise ValueError(f"train has {len(train_states)} layers of states, test {len(test_states)}")
    if not 0.5 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0.5, 1], got {threshold}")
    vocab = SearchVocab(max_input_size)
    tr_rows, tr_pos, tr_dist, _ = probe_targets(train_batch, vocab)
    te_rows, te_pos, te_dist, te_in = probe_targets(test_batch, vocab)
    y = (tr_dist >= 1).astype(np.float64)  # (N, V) reachable in >= 1 edge
    max_d = vocab.n_ids
    recall = np.zeros((len(train_states), max_d))
    fpr = np.zeros(len(train_states))
    counts = np.array([(te_dist == d).sum() for d in range(1, max_d + 1)])
    for layer, (x, xt) in enumerate(
        zip(_features(train_states, tr_rows, tr_pos), _features(test_states, te_rows, te_pos))
    ):
        gram = x.T @ x
        gram += ridge * np.trace(gram) / len(gram) * np.eye(len(gram))
        w = np.linalg.solve(gram, x.T @ y)  # (d+1, V)
        pred = xt @ w > 0.5  # (N_test, V)
        for d in range(1, max_d + 1):
            at_d = te_dist == d
            recall[layer, d - 1] = pred[at_d].mean() if at_d.any() else np.nan
        negatives = te_in & (te_dist < 0)
        fpr[layer] = pred[negatives].mean() if negatives.any() else 0.0
    radius = np.array([_radius(r, f, threshold) for r, f in zip(recall, fpr)])
    return ProbeResult(recall, fpr, radius, counts, threshold)


def _radius(recall: np.ndarray, fpr: float, threshold: float) -> int:
    if fpr > 1 - threshold:
        return 0
    r = 0
    for d, value in enumerate(recall, start=1):
        if np.isnan(value):
            break
        if value < threshold:
            break
        r = d
    return r


def radius_growth(radius: np.ndarray | list[int], max_distance: int) -> float:
    """Geometric-mean growth factor of the radius per layer, before it saturates.

    Uses consecutive layers (l, l+1) with radius[l] >= 1 (a known start). A step that
    reaches `max_distance` (the largest distance in the test graphs) is censored: the
    radius could not grow further, so it counts only if it at least doubled. 2.0 means
    the radius doubles per layer (the paper's path-merging); NaN when no step counts.
    """
    r = [int(x) for x in radius]
    ratios = [
        b / a
        for a, b in zip(r, r[1:])
        if 1 <= a < max_distance and (b < max_distance or b >= 2 * a)
    ]
    if not ratios:
        return float("nan")
    return float(np.exp(np.mean(np.log(np.maximum(ratios, 1e-9)))))
