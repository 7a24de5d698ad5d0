import numpy as np
import pytest
import torch
import trimesh

from minirepro.papers.meshtron import (
    HourglassLM,
    MeshTokenizer,
    MeshtronConfig,
    generate,
    order_mask,
    sequence_errors,
    valid_rate,
)


def _model(tok, window=None):
    torch.manual_seed(0)
    cfg = MeshtronConfig(vocab_size=tok.vocab_size, layers=(1, 1, 1, 1, 1), d_model=32,
                         n_head=2, window=window)  # fmt: skip
    return HourglassLM(cfg)


def test_order_mask_allows_every_token_of_a_canonical_mesh_and_eos_only_at_faces():
    tok = MeshTokenizer(16)
    ids = torch.as_tensor(tok.encode(trimesh.creation.icosphere(1)))[None]
    for p in range(1, ids.shape[1]):
        allowed = order_mask(ids[:, :p], tok)
        assert allowed[0, ids[0, p]], p  # the true continuation is never masked
        assert bool(allowed[0, tok.eos]) == ((p - 1) % 9 == 0 and p > 1)
        assert not allowed[0, tok.bos] and not allowed[0, tok.pad]
    assert order_mask(ids[:, :10], tok, max_faces=1)[0].nonzero().flatten().tolist() == [tok.eos]


def test_order_mask_forbids_what_breaks_the_order():
    tok = MeshTokenizer(8)
    seq = torch.tensor([[tok.bos, 1, 2, 3]])  # v0 = (z1, y2, x3); v1 must be above it
    allowed = order_mask(seq, tok)[0, : tok.n_levels]
    assert allowed.nonzero().min() == 1  # z >= 1
    seq = torch.tensor([[tok.bos, 1, 2, 3, 1, 2]])  # tied on z, y: x must be > 3
    assert order_mask(seq, tok)[0, : tok.n_levels].nonzero().min() == 4


@pytest.mark.parametrize("window", [None, 27])
def test_robust_sampling_gives_valid_meshes_from_a_random_model(window):
    tok = MeshTokenizer(16)
    model = _model(tok, window)
    g = torch.Generator().manual_seed(0)
    out = generate(model, tok, 6, 12, robust=True, generator=g)
    valid = [not sequence_errors(s, tok) for s in out.tokens]
    # only dead ends (a prefix with no order-respecting continuation) may fail
    assert sum(valid) >= len(valid) - out.dead_ends and sum(valid) >= 3
    plain = generate(model, tok, 6, 12, robust=False, generator=torch.Generator().manual_seed(0))
    assert valid_rate(plain.tokens, tok) < valid_rate(out.tokens, tok)


def test_same_seed_same_meshes_and_fixed_length_mode():
    tok = MeshTokenizer(16)
    model = _model(tok, 18)
    a = generate(model, tok, 2, 5, generator=torch.Generator().manual_seed(1))
    b = generate(model, tok, 2, 5, generator=torch.Generator().manual_seed(1))
    assert all(np.array_equal(x, y) for x, y in zip(a.tokens, b.tokens))
    fixed = generate(model, tok, 2, 5, robust=False, stop_at_eos=False,
                     generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert fixed.n_tokens == 2 * 45 and all(len(s) == 46 for s in fixed.tokens)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, tok, 1, 5, temperature=0)
    with pytest.raises(ValueError, match="vocab_size"):
        generate(model, MeshTokenizer(32), 1, 5)


def _completions(n):
    """All faces (c0 < c1 < c2) over n^3 vertex codes, as (9,) zyx token rows."""
    import itertools

    codes = list(itertools.combinations(range(n**3), 3))
    zyx = lambda c: [c // (n * n), c // n % n, c % n]  # noqa: E731
    return np.array([sum((zyx(c) for c in face), []) for face in codes])


def test_order_mask_matches_brute_force_feasibility():
    """A token is allowed iff some completion of the face is order-respecting and has
    non-zero area; with no such face left, only EOS."""
    n = 3
    tok = MeshTokenizer(n)
    rows = _completions(n)
    rows = rows[~_degenerate(rows)]
    rng = np.random.default_rng(0)
    # random previous faces, and the last few faces (nothing or little left above them)
    prevs = [rows[rng.integers(len(rows))] if rng.random() < 0.9 else None for _ in range(300)]
    for prev in prevs + [rows[-i] for i in range(1, 6) for _ in range(5)]:
        later = rows if prev is None else rows[[tuple(r) > tuple(prev) for r in rows]]
        head = [tok.bos] + ([] if prev is None else list(prev))
        if not len(later):
            allowed = order_mask(torch.tensor([head]), tok)[0]
            assert allowed.nonzero().flatten().tolist() == [tok.eos]
            continue
        target = later[rng.integers(len(later))]
        q = int(rng.integers(0, 9))
        allowed = order_mask(torch.tensor([head + list(target[:q])]), tok)[0, :n].numpy()
        match = (later[:, :q] == target[:q]).all(1)
        assert set(np.flatnonzero(allowed).tolist()) == set(later[match, q].tolist()), (prev, q)


def _degenerate(rows):
    v = rows.reshape(-1, 3, 3)
    return (np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]) == 0).all(1)
