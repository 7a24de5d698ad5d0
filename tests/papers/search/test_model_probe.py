"""The one-hot model input, the core embedding hook, and the reachability probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minirepro.core.model import ModelConfig, Transformer
from minirepro.papers.search import (
    OneHotEmbedding,
    edge_target_positions,
    layer_states,
    make_search_model,
    radius_growth,
    reachability_probe,
)
from minirepro.tasks.dag_search import SearchVocab, generate_batch


def test_onehot_embedding_is_token_and_position_one_hot():
    cfg = ModelConfig(vocab_size=7, d_model=20, n_head=1, max_seq_len=9, embedding="onehot",
                      tie_embeddings=False)  # fmt: skip
    emb = OneHotEmbedding(cfg)
    idx = torch.tensor([[3, 0, 6], [1, 1, 2]])
    x = emb(idx, torch.arange(3))
    assert x.shape == (2, 3, 20)
    torch.testing.assert_close(x[..., :7], torch.nn.functional.one_hot(idx, 7).float())
    torch.testing.assert_close(x[..., 7:11], torch.zeros(2, 3, 4))
    torch.testing.assert_close(x[0, :, 11:], torch.eye(9)[:3])


def test_model_with_onehot_input_trains_every_parameter():
    model = make_search_model(23, n_layer=2, d_model=48)
    b = generate_batch(8, 23, rng=0)
    x, y = b.torch()
    logits = model(x)
    assert logits.shape == (8, 23, SearchVocab(23).vocab_size)
    torch.nn.functional.cross_entropy(logits[:, -1], y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not list(model.embed.parameters())  # the input is fixed, as in the reference


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(embedding="onehot", d_model=16, tie_embeddings=False), "d_model >= vocab_size"),
        (dict(embedding="onehot", d_model=64, tie_embeddings=True), "tie_embeddings=False"),
    ],
)
def test_bad_onehot_models_are_named(kwargs, match):
    cfg = ModelConfig(vocab_size=10, n_head=1, max_seq_len=20, **kwargs)
    with pytest.raises(ValueError, match=match):
        Transformer(cfg)


def _prefix_distances(tokens, vocab):
    """Per edge token: BFS distances from its v over the edges listed so far (loops)."""
    out = []
    for row in tokens:
        children: dict[int, list[int]] = {}
        for p in range(2, len(row)):
            if row[p - 2] != vocab.edge:
                continue
            children.setdefault(int(row[p - 1]), []).append(int(row[p]))
            d = np.full(vocab.n_ids + 1, -1)
            d[row[p]], frontier, k = 0, [int(row[p])], 0
            while frontier:
                k += 1
                frontier = [c for f in frontier for c in children.get(f, []) if d[c] < 0]
                for c in frontier:
                    d[c] = k
            out.append(d)
    return np.array(out)


def _hand_built_states(batch, size, radii, d, seed=0):
    """States whose edge-target positions hold exactly the vertices within radius r of v
    (through a random linear map), one list entry per radius; noise elsewhere."""
    vocab = SearchVocab(size)
    V = vocab.n_ids + 1
    g = np.random.default_rng(seed)
    mix = g.normal(size=(V, d))
    rows, pos, v = edge_target_positions(batch.tokens, vocab)
    dist = _prefix_distances(batch.tokens, vocab)  # (N, V)
    states = []
    for r in radii:
        h = g.normal(size=(*batch.tokens.shape, d))
        h[rows, pos] = ((dist >= 1) & (dist <= r)).astype(float) @ mix
        states.append(torch.from_numpy(h).float())
    return states


def test_probe_recovers_known_reachable_sets():
    size, radii = 32, [0, 1, 2, 4]
    fit = generate_batch(300, size, "balanced", rng=1)
    test = generate_batch(300, size, "balanced", rng=2)
    p = reachability_probe(
        _hand_built_states(fit, size, radii, d=24), fit,
        _hand_built_states(test, size, radii, d=24, seed=0), test, size,
    )  # fmt: skip
    assert p.max_distance >= 4
    np.testing.assert_array_equal(p.radius, radii)
    # the probe is fitted to the whole reachable set; states that hold only radius r let
    # it guess a little beyond r from correlations, never enough to pass the threshold
    assert (p.false_positive_rate < 0.01).all()
    for layer, r in enumerate(radii):
        known = p.recall[layer, : p.max_distance]
        np.testing.assert_allclose(known[:r], 1.0)  # every vertex within r
        assert (known[r:] < 0.5).all()
    assert radius_growth(p.radius, p.max_distance) == pytest.approx(2.0)


def test_probe_on_random_states_finds_nothing():
    size = 32
    fit = generate_batch(200, size, "balanced", rng=1)
    test = generate_batch(200, size, "balanced", rng=2)
    g = torch.Generator().manual_seed(0)
    noise = lambda b: [torch.randn(*b.tokens.shape, 24, generator=g)]  # noqa: E731
    p = reachability_probe(noise(fit), fit, noise(test), test, size)
    assert p.radius.tolist() == [0]


def test_layer_states_are_the_residual_stream():
    model = make_search_model(23, n_layer=3, d_model=48)
    x = generate_batch(4, 23, rng=0).tokens
    states = layer_states(model, x)
    assert len(states) == 4 and states[0].shape == (4, 23, 48)
    final = model.norm(states[-1])
    torch.testing.assert_close(model.lm_head(final), model(torch.from_numpy(x)))


def test_radius_growth():
    assert radius_growth([0, 1, 2, 4, 5], 5) == pytest.approx(2.0)
    assert radius_growth([0, 1, 1, 1], 5) == pytest.approx(1.0)
    assert radius_growth([0, 1, 5, 5], 5) == pytest.approx(5.0)  # doubled into saturation
    assert radius_growth([0, 3, 4, 4], 4) != radius_growth([0, 3, 4, 4], 4)  # censored: NaN
    assert np.isnan(radius_growth([0, 0, 0], 5))
