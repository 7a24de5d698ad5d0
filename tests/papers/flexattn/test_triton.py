"""The Triton FlexAttention kernels under TRITON_INTERPRET=1, against the CPU path and the
dense oracle. Tiny shapes: the interpreter runs every program in Python.

The interpreter flag is set by a fixture for this module's tests only, not for the pytest
process: triton reads it when a function is decorated (its own library functions at
import), so the fixture imports triton and the kernel modules afresh under the flag and
puts the original modules back afterwards. (Module scope: re-importing triton per test
would cost about a second each.)
"""

import warnings

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install 'triton>=3.4,<3.9')")

from minirepro.papers.flexattn import (  # noqa: E402
    and_masks,
    create_block_mask,
    flex_attention,
    make_alibi,
    make_causal,
    make_document,
    make_prefix_lm,
    make_sliding_window,
    make_softcap,
    noop_mask,
    parse_variant,
)
from minirepro.papers.flexattn.masks import (  # noqa: E402
    compose_score_mods,
    offset_mask,
    offset_score,
    or_masks,
)
from minirepro.papers.flexattn.reference import dense_flex_attention  # noqa: E402

pytestmark = [pytest.mark.triton, pytest.mark.usefixtures("interpreted_triton")]


@pytest.fixture(scope="module")
def interpreted_triton(interpreted_triton_for):
    """TRITON_INTERPRET=1 for this module's tests, triton and our kernels decorated under it."""
    with interpreted_triton_for(
        "minirepro.papers.flexattn.triton_kernel", "minirepro.papers.flexattn.triton_bwd"
    ):
        yield


TRITON = {"backend": "triton"}


def per_head(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & (q_idx - kv_idx <= 8 * (h + 1))


def late_start(b, h, q_idx, kv_idx):
    """Causal, but queries before 20 see nothing: fully masked rows."""
    return (q_idx >= kv_idx) & (q_idx >= 20)


CASES = {
    "causal": (make_causal(), None),
    "sliding_window": (make_sliding_window(13), None),
    "prefix_lm": (make_prefix_lm(21), None),
    "document": (make_document([0, 17, 18, 50, 77]), None),
    "document_len": (parse_variant("document_24")[0], None),
    "per_head": (per_head, None),
    "noop": (noop_mask, None),
    "fully_masked_rows": (late_start, None),
    "alibi": (make_causal(), make_alibi(2)),
    "softcap": (make_sliding_window(20), make_softcap(2.0)),
}


def _qkv(B, H, Hkv, S, T, D, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, S, D, generator=g)
    k, v = (torch.randn(B, Hkv, T, D, generator=g) for _ in range(2))
    return q, k, v


def _check(mm, sm, S, T, block, B=1, H=2, Hkv=1, D=16, seed=0):
    q, k, v = _qkv(B, H, Hkv, S, T, D, seed)
    bm = create_block_mask(mm, None, H, S, T, BLOCK_SIZE=block)
    out, lse = flex_attention(
        q, k, v, sm, bm, enable_gqa=True, return_lse=True, kernel_options=TRITON
    )
    cpu_out, cpu_lse = flex_attention(q, k, v, sm, bm, enable_gqa=True, return_lse=True)
    ref_out, ref_lse = dense_flex_attention(q, k, v, sm, mm)
    for want_out, want_lse in ((cpu_out, cpu_lse), (ref_out, ref_lse)):
        torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse, want_lse, atol=1e-5, rtol=1e-5)
    return out, lse


@pytest.mark.parametrize("case", CASES)
def test_matches_cpu_and_dense_oracle(case):
    mm, sm = CASES[case]
    # GQA (2 query heads on 1 kv head), 77 keys: not a multiple of the block
    out, lse = _check(mm, sm, S=77, T=77, block=32, seed=len(case))
    if case == "fully_masked_rows":
        assert torch.all(out[:, :, :20] == 0) and torch.all(torch.isneginf(lse[:, :, :20]))


@pytest.mark.parametrize("S,T,block", [(45, 77, 16), (70, 33, (32, 16))])
def test_odd_lengths_and_block_shapes(S, T, block):
    _check(make_prefix_lm(9), None, S, T, block, B=2, H=2, Hkv=2, seed=S)


def test_gqa_four_heads_per_kv_head():
    _check(make_sliding_window(10), make_softcap(5.0), 40, 40, 16, B=1, H=4, Hkv=1, seed=3)


def _unsupported_capture():
    bias = torch.randn(64)

    def biased(score, b, h, q_idx, kv_idx):
        return score + bias[kv_idx]

    return biased


def _torch_call(score, b, h, q_idx, kv_idx):
    return torch.sigmoid(score)


@pytest.mark.parametrize(
    "score_mod,mask_mod,match",
    [
        (_unsupported_capture(), noop_mask, "captures 'bias'"),
        (_torch_call, noop_mask, "calls torch"),
        (None, lambda b, h, q, kv: q >= kv, "only `def` functions"),
        (None, and_masks(make_document([0, 9, 32]), make_document([0, 20, 32])), "capture tensors"),
    ],
)
def test_unsupported_mods_raise_value_error(score_mod, mask_mod, match):
    q, k, v = _qkv(1, 1, 1, 32, 32, 16, 0)
    bm = create_block_mask(mask_mod, None, None, 32, 32, BLOCK_SIZE=16)
    with pytest.raises(ValueError, match=match):
        flex_attention(q, k, v, score_mod, bm, kernel_options=TRITON)


def test_block_size_and_alibi_errors():
    q, k, v = _qkv(1, 2, 2, 32, 32, 16, 0)
    bm8 = create_block_mask(make_causal(), None, None, 32, 32, BLOCK_SIZE=8)
    with pytest.raises(ValueError, match="power-of-2 block sizes >= 16"):
        flex_attention(q, k, v, block_mask=bm8, kernel_options=TRITON)
    bm = create_block_mask(make_causal(), None, None, 32, 32, BLOCK_SIZE=16)
    with pytest.raises(ValueError, match="too few slopes"):
        flex_attention(q, k, v, make_alibi(1), bm, kernel_options=TRITON)


# --------------------------------------------------------------------------- backward


def rel_bias(score, b, h, q_idx, kv_idx):
    """An additive relative-position bias written as index arithmetic."""
    return score + 0.05 * (q_idx - kv_idx) - 0.1 * h


def _one(score, b, h, q_idx, kv_idx):
    return 1.0


rel_bias.score_grad = _one  # its derivative w.r.t. the score, for the Triton backward

GRAD_CASES = {
    # name: mask_mod, score_mod, (B, H, Hkv, S, T, block)
    "causal": (make_causal(), None, (1, 2, 1, 77, 77, 32)),
    "sliding_window_softcap": (make_sliding_window(13), make_softcap(2.0), (1, 2, 2, 77, 77, 16)),
    "document_alibi_gqa": (
        make_document([0, 17, 18, 50, 77]),
        make_alibi(4),
        (1, 4, 2, 77, 77, 32),
    ),
    "prefix_lm_rect": (make_prefix_lm(21), None, (2, 2, 2, 45, 77, (16, 32))),
    "fully_masked_rows_rel_bias": (late_start, rel_bias, (2, 2, 1, 50, 50, 16)),
    "per_head_noop_score": (per_head, None, (1, 2, 2, 40, 40, 16)),
}


@pytest.mark.parametrize("case", GRAD_CASES)
def test_backward_matches_dense_autograd(case):
    mm, sm, (B, H, Hkv, S, T, block) = GRAD_CASES[case]
    q, k, v = (x.requires_grad_() for x in _qkv(B, H, Hkv, S, T, 16, seed=len(case)))
    bm = create_block_mask(mm, None, H, S, T, BLOCK_SIZE=block)
    out = flex_attention(q, k, v, sm, bm, enable_gqa=True, kernel_options=TRITON)
    ref_out, _ = dense_flex_attention(q, k, v, sm, mm)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    do = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), do)
    want = torch.autograd.grad(ref_out, (q, k, v), do)
    for name, a, b in zip("qkv", got, want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"d{n}: {m}")
    if case == "fully_masked_rows_rel_bias":
        assert torch.all(got[0][:, :, :20] == 0)


def test_backward_without_known_derivative_raises():
    def scaled(score, b, h, q_idx, kv_idx):
        return score * 0.5

    q, k, v = _qkv(1, 1, 1, 32, 32, 16, 0)
    bm = create_block_mask(make_causal(), None, None, 32, 32, BLOCK_SIZE=16)
    with pytest.raises(NotImplementedError, match="no derivative for score_mod 'scaled'"):
        flex_attention(q.requires_grad_(), k, v, scaled, bm, kernel_options=TRITON)
    with torch.no_grad():  # the forward alone works
        out = flex_attention(q, k, v, scaled, bm, kernel_options=TRITON)
    torch.testing.assert_close(out, dense_flex_attention(q, k, v, scaled, make_causal())[0])


# --------------------------------------------------------------------------- compositions


def look_back_16(b, h, q_idx, kv_idx):
    return q_idx - kv_idx <= 16


def shift(score, b, h, q_idx, kv_idx):
    return score + 0.05 * (q_idx - kv_idx)


shift.score_grad = _one

COMPOSED = {
    # mask_mod, score_mod, (S, T): and/or masks, "+"-joined variants, the core model's
    # KV-cache offset (S < T, queries from position T - S), composed / offset score_mods
    "and": (and_masks(make_causal(), look_back_16), None, (77, 77)),
    "or": (or_masks(make_prefix_lm(9), make_sliding_window(5)), None, (77, 77)),
    "and_document": (and_masks(make_document([0, 30, 77]), look_back_16), None, (77, 77)),
    "variant_plus": (*parse_variant("document_24+sliding_window_10+softcap_3"), (77, 77)),
    "offset_decode": (
        offset_mask(make_sliding_window(20), 60),
        offset_score(make_alibi(2), 60),
        (17, 77),
    ),
    "chain": (make_causal(), compose_score_mods(make_softcap(3.0), shift), (50, 50)),
}


@pytest.mark.parametrize("case", COMPOSED)
def test_composed_mods_run_on_triton(case):
    """Composed mods compile to one generated jit function (they raised before); forward
    and backward against the dense oracle."""
    mm, sm, (S, T) = COMPOSED[case]
    q, k, v = (x.requires_grad_() for x in _qkv(1, 2, 1, S, T, 16, seed=len(case)))
    bm = create_block_mask(mm, None, None, S, T, BLOCK_SIZE=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback: the Triton kernel itself ran
        out, lse = flex_attention(
            q, k, v, sm, bm, enable_gqa=True, return_lse=True, kernel_options=TRITON
        )
    ref_out, ref_lse = dense_flex_attention(q, k, v, sm, mm)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)
    do = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), do)
    want = torch.autograd.grad(ref_out, (q, k, v), do)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mask", ["sliding_window_6+softcap_5", "document_12"])
def test_core_model_decodes_with_the_kv_cache_on_triton(mask):
    """The core model's KV-cache decoding (offset_mask / offset_score compositions) on the
    Triton kernel equals the dense oracle's full forward."""
    from minirepro.core.model import ModelConfig, Transformer

    torch.manual_seed(0)
    kw = dict(vocab_size=32, n_layer=1, n_head=2, n_kv_head=1, d_model=32, mask=mask)
    options = {"flex_block_size": 16, "flex_kernel_options": TRITON}
    flex = Transformer(ModelConfig(attention="flex", mixer_kwargs=options, **kw))
    dense = Transformer(ModelConfig(attention="flex_dense", **kw))
    dense.load_state_dict(flex.state_dict())
    x = torch.randint(0, 32, (1, 20))
    cache = flex.new_cache(1, 20)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # the Triton kernel ran, no fallback
        logits = [flex(x[:, :16], cache=cache)]
        logits += [flex(x[:, t : t + 1], cache=cache) for t in range(16, 20)]
        torch.testing.assert_close(torch.cat(logits, 1), dense(x), atol=1e-5, rtol=1e-5)


def test_cuda_falls_back_to_the_stream_strategy_for_mods_triton_cannot_compile():
    """Without an explicit backend (CUDA inputs), a mod the kernel cannot compile runs on
    the torch stream strategy with a warning instead of raising."""
    from minirepro.papers.flexattn.api import _triton

    q, k, v = _qkv(1, 2, 2, 32, 32, 16, 0)
    bm = create_block_mask(
        lambda b, h, q_idx, kv_idx: q_idx >= kv_idx, None, None, 32, 32, BLOCK_SIZE=16
    )
    with pytest.warns(UserWarning, match="stream strategy"):
        assert _triton(q, k, v, None, bm, 0.25, {}) is None
    with pytest.raises(ValueError, match="only `def` functions"):
        _triton(q, k, v, None, bm, 0.25, TRITON)
