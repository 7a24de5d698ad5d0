import pytest
import torch

from minirepro.papers.flexattn import create_block_mask, flex_attention, make_sliding_window
from minirepro.papers.flexattn.masks import offset_mask
from minirepro.papers.meshtron import HourglassLM, MeshtronConfig, RollingKVCache

V = 40  # 37 coordinate levels + BOS, EOS, PAD


def _model(layers, window=None, cond=False, seed=0):
    torch.manual_seed(seed)
    cfg = MeshtronConfig(vocab_size=V, layers=layers, d_model=32, n_head=2, window=window,
                         point_cloud=cond, face_bins=4 if cond else 0, max_faces=50, n_latents=4)  # fmt: skip
    return HourglassLM(cfg).eval()


def _receptive_field(model, L=47, seed=1):
    """For each output position t, the set of input positions its logits depend on."""
    torch.manual_seed(seed)
    x = torch.randint(0, V - 3, (1, L))
    emb = model.embed(x).detach().requires_grad_(True)
    y = model.head(model.norm(model._level(emb, 0, None)))
    seen = []
    for t in range(L):
        (g,) = torch.autograd.grad(y[0, t].sum(), emb, retain_graph=True)
        seen.append(set(g[0].abs().sum(-1).nonzero().flatten().tolist()))
    return seen


@pytest.mark.parametrize("layers", [(1, 1, 2, 1, 1), (1, 1, 1), (4,)])
def test_no_position_sees_a_future_token(layers):
    seen = _receptive_field(_model(layers))
    for t, s in enumerate(seen):
        assert max(s) == t  # sees itself (through the residual) and nothing later
        assert 0 in s  # and the start, through full attention


def test_sliding_window_limits_what_a_flat_model_sees():
    W = 10
    seen = _receptive_field(_model((3,), window=W))
    for t, s in enumerate(seen):
        # three layers of window W: nothing further back than 3 W
        assert max(s) == t and min(s) == max(0, t - 3 * W)


def test_shortening_groups_are_vertex_and_face_aligned():
    """With layers only at the face level, position t sees exactly: itself; its vertex
    group j = t // 3 (tokens 3j-2 .. 3j, merged by the first shortening); and, through the
    face level, faces 0 .. J = j // 3 (tokens 0 .. 9J). With BOS at 0, vertex v is tokens
    3v+1 .. 3v+3 and face f tokens 9f+1 .. 9f+9: groups close on vertex/face boundaries."""
    model = _model((0, 0, 1, 0, 0))
    for t, s in enumerate(_receptive_field(model, L=30)):
        j = t // 3
        expected = {t} | {i for i in (3 * j - 2, 3 * j - 1, 3 * j) if i >= 0}
        expected |= set(range(9 * (j // 3) + 1))
        assert s == expected, t


@pytest.mark.parametrize(
    "layers,window,cond", [((1, 1, 2, 1, 1), 27, True), ((1, 1, 1), 18, False), ((2,), 9, False)]
)
def test_rolling_cache_generation_equals_the_windowed_forward(layers, window, cond):
    model = _model(layers, window=window, cond=cond)
    L = 4 * window + 11  # several times around the rolling buffers at every level
    torch.manual_seed(2)
    x = torch.randint(0, V - 3, (2, L))
    x[:, 0] = V - 3
    kw = dict(points=torch.rand(2, 16, 3) - 0.5, n_faces=torch.tensor([5, 40])) if cond else {}
    full = model(x, **kw)  # flexattn sliding-window mask over the whole sequence
    st = model.new_state(2, L, **kw)
    assert isinstance(st.pre[0][0], RollingKVCache)
    steps = torch.stack([model.step(x[:, i], st) for i in range(L)], 1)
    torch.testing.assert_close(steps, full, atol=2e-5, rtol=1e-4)
    # and the window matters: full attention gives other logits past the window
    no_window = HourglassLM(type(model.cfg)(**{**model.cfg.__dict__, "window": None})).eval()
    no_window.load_state_dict(model.state_dict())
    assert not torch.allclose(no_window(x, **kw)[:, window + 9 :], full[:, window + 9 :], atol=1e-4)


def test_full_cache_generation_equals_the_forward():
    model = _model((1, 1, 2, 1, 1), cond=True)
    x = torch.randint(0, V - 3, (3, 40))
    kw = dict(points=torch.rand(3, 16, 3) - 0.5, n_faces=torch.tensor([5, 40, 9]))
    st = model.new_state(3, 40, **kw)
    steps = torch.stack([model.step(x[:, i], st) for i in range(40)], 1)
    torch.testing.assert_close(steps, model(x, **kw), atol=2e-5, rtol=1e-4)


def test_rolling_cache_chunks_match_flex_with_the_window_mask():
    """Prefill chunks of several tokens go through the flex mask in the cache's local frame."""
    torch.manual_seed(3)
    B, H, D, W, L = 1, 2, 8, 6, 29
    q, k, v = (torch.randn(B, H, L, D) for _ in range(3))
    bm = create_block_mask(make_sliding_window(W), None, None, L, L, BLOCK_SIZE=8)
    ref = flex_attention(q, k, v, block_mask=bm)
    cache = RollingKVCache(B, H, W, D, "cpu", torch.float32)
    outs, start = [], 0
    for S in (5, 1, 9, 3, 11):
        kk, vv, q0 = cache.update(start, k[:, :, start : start + S], v[:, :, start : start + S])
        # the cache's local frame: its first kept key is 0, the new queries start at q0
        window = offset_mask(make_sliding_window(W), q0)
        m = create_block_mask(window, None, None, S, kk.shape[2], BLOCK_SIZE=8)
        outs.append(flex_attention(q[:, :, start : start + S], kk, vv, block_mask=m))
        start += S
    torch.testing.assert_close(torch.cat(outs, 2), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="continues its sequence"):
        cache.update(0, k[:, :, :1], v[:, :, :1])


def test_bad_configs_and_inputs():
    with pytest.raises(ValueError, match="levels"):
        MeshtronConfig(layers=(1, 1))
    with pytest.raises(ValueError, match="window"):
        MeshtronConfig(layers=(1, 1, 1, 1, 1), window=5)
    model = _model((1, 1, 1))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.full((1, 4), V))
    with pytest.raises(ValueError, match="no condition"):
        model(torch.zeros(1, 4, dtype=torch.long), points=torch.zeros(1, 4, 3))
    cond = _model((1,), cond=True)
    with pytest.raises(ValueError, match="points must be"):
        cond(torch.zeros(1, 4, dtype=torch.long), points=torch.zeros(1, 4), n_faces=torch.ones(1))
    with pytest.raises(ValueError, match="n_faces"):
        cond(torch.zeros(1, 4, dtype=torch.long), points=torch.zeros(1, 4, 3))
