"""FlexAttention: API parity with torch's flex_attention, dense oracle, gradients, paged."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import flex_attention as ref

from minirepro.core.model import ModelConfig, Transformer
from minirepro.core.results import RunDir
from minirepro.papers.flexattn import (
    PAPER,
    PagedAttention,
    and_masks,
    create_block_mask,
    create_mask,
    flex_attention,
    make_causal,
    make_document,
    make_prefix_lm,
    make_sliding_window,
    make_softcap,
    noop_mask,
    or_masks,
    parse_variant,
)
from minirepro.papers.flexattn.block_mask import _TENSOR_ATTRS as BLOCK_TENSORS
from minirepro.papers.flexattn.plan import get_plan
from minirepro.papers.flexattn.reference import dense_flex_attention

MASKS = {
    "causal": make_causal(),
    "sliding_window": make_sliding_window(37),
    "prefix_lm": make_prefix_lm(50),
    "document": make_document([0, 30, 31, 100, 170, 300]),
    "or": or_masks(make_sliding_window(10), make_prefix_lm(20)),
    "and": and_masks(make_causal(), lambda b, h, q, kv: (kv % 5) != 0),
    "per_head": lambda b, h, q, kv: (q - kv >= 0) & (q - kv <= 16 * (h + 1)),
    "noop": noop_mask,
}
STREAM = {"plan": "stream"}


def _qkv(B, H, Hkv, S, T, D, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, S, D, generator=g)
    k, v = (torch.randn(B, Hkv, T, D, generator=g) for _ in range(2))
    return [x.requires_grad_(grad) for x in (q, k, v)]


def _assert_grads_match(out, expected, inputs, atol=1e-4):
    """d(out)/d(inputs) equals d(expected)/d(inputs) for one random cotangent."""
    do = torch.randn_like(out)
    got = torch.autograd.grad(out, inputs, do)
    want = torch.autograd.grad(expected, inputs, do)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=atol, rtol=atol)


@pytest.mark.parametrize("mask", ["per_head", "and"])
def test_stream_plan_matches_dense_oracle(mask):
    """The stream strategy without a score_mod (the fallback of the calls strategy)."""
    B, H, Hkv, S, D = 2, 4, 2, 300, 16
    mm = MASKS[mask]
    q, k, v = _qkv(B, H, Hkv, S, S, D, seed=7, grad=True)
    bm = create_block_mask(mm, B if mask == "per_head" else None, H, S, S, BLOCK_SIZE=64)
    out = flex_attention(q, k, v, block_mask=bm, enable_gqa=True, kernel_options=STREAM)
    exp_out, _ = dense_flex_attention(q, k, v, None, mm)
    torch.testing.assert_close(out, exp_out, atol=1e-5, rtol=1e-5)
    _assert_grads_match(out, exp_out, (q, k, v))


FUSED_CASES = {
    # mask_mod, S, expected calls: the benchmark's variants at a small scale
    "causal": (make_causal(), 256, [("square", 1)]),
    "causal_odd_length": (make_causal(), 250, None),
    # interior rows as one band; the first two rows' blocks as a causal square
    "sliding_window": (make_sliding_window(64), 256, [("band", 6), ("square", 1)]),
    "sliding_window_odd": (make_sliding_window(40), 250, "band"),
    "bidirectional_band": (lambda b, h, q, kv: (q - kv).abs() <= 40, 256, "band"),
    "document": (make_document(list(range(0, 257, 64))), 256, [("square", 4)]),
    "prefix_lm": (make_prefix_lm(64), 256, [("square", 1), ("rect", 1)]),
}


@pytest.mark.parametrize("case", FUSED_CASES)
def test_fused_plan_structure_and_gradients(case):
    mm, S, expected = FUSED_CASES[case]
    B, H, Hkv, D = 2, 4, 2, 16
    bm = create_block_mask(mm, None, None, S, S, BLOCK_SIZE=32)
    plan = get_plan(bm, B, H, S, S, "calls")
    assert plan is not None
    if expected is not None:
        kinds = [
            ("band" if c.band else "square" if c.causal else
             "diag" if c.mq == c.mk == 1 else "rect", c.cnt)
            for c in plan.groups[0].calls
        ]  # fmt: skip
        if expected == "band":
            assert ("band", 4) in kinds or ("band", 6) in kinds, kinds
        else:
            assert sorted(kinds) == sorted(expected)
    q, k, v = _qkv(B, H, Hkv, S, S, D, seed=S, grad=True)
    out, lse = flex_attention(q, k, v, block_mask=bm, enable_gqa=True, return_lse=True)
    exp_out, exp_lse = dense_flex_attention(q, k, v, None, mm)
    torch.testing.assert_close(out, exp_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, exp_lse, atol=1e-5, rtol=1e-5)
    _assert_grads_match(out, exp_out, (q, k, v))


def look_ahead(b, h, q_idx, kv_idx):
    """Per-head band of keys ahead of the query: windows never leave the sequence."""
    d = kv_idx - q_idx
    return (d >= 0) & (d <= 16 * (h + 1))


@pytest.mark.parametrize("S,T", [(64, 128), (128, 128)])
def test_per_head_bands_on_views(S, T):
    q, k, v = _qkv(2, 3, 3, S, T, 16, seed=S, grad=True)
    bm = create_block_mask(look_ahead, None, 3, S, T, BLOCK_SIZE=16)
    plan = get_plan(bm, 2, 3, S, T, "calls")
    assert len(plan.groups) == 3 and all(any(c.band for c in g.calls) for g in plan.groups)
    out = flex_attention(q, k, v, block_mask=bm)
    exp, _ = dense_flex_attention(q, k, v, None, look_ahead)
    torch.testing.assert_close(out, exp, atol=1e-5, rtol=1e-5)
    _assert_grads_match(out, exp, (q, k, v))


@pytest.mark.parametrize("S,T,block", [(1, 77, 16), (130, 257, 64), (64, 64, 128), (200, 90, 32)])
def test_random_shapes_match_sdpa(S, T, block):
    mm = make_sliding_window(40) if S <= T else noop_mask
    q, k, v = _qkv(1, 3, 3, S, T, 8, seed=S + T)
    bm = create_block_mask(mm, None, None, S, T, BLOCK_SIZE=block)
    mask = create_mask(mm, 1, 1, S, T)
    expect = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).nan_to_num(0.0)
    torch.testing.assert_close(flex_attention(q, k, v, block_mask=bm), expect, atol=1e-5, rtol=1e-5)


def test_score_mod_parameter_gradients():
    B, H, S, D = 2, 2, 150, 8
    bias = torch.randn(H, 2 * S, requires_grad=True)

    def rel_bias(score, b, h, q_idx, kv_idx):
        return score + bias[h, q_idx - kv_idx + S]

    q, k, v = _qkv(B, H, H, S, S, D, grad=True)
    bm = create_block_mask(make_causal(), None, None, S, S, BLOCK_SIZE=32)
    out = flex_attention(q, k, v, rel_bias, bm)
    exp, _ = dense_flex_attention(q, k, v, rel_bias, make_causal())
    torch.testing.assert_close(out, exp, atol=1e-5, rtol=1e-5)
    do = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v, bias), do)
    want = torch.autograd.grad(exp, (q, k, v, bias), do)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("score", [None, make_softcap(3.0)])
def test_fully_masked_rows_give_zero_and_neg_inf(score):
    def every_other_row(b, h, q, kv):
        return (q % 2 == 0) & (kv <= q)

    q, k, v = _qkv(1, 2, 2, 100, 100, 8, grad=True)
    bm = create_block_mask(every_other_row, None, None, 100, 100, BLOCK_SIZE=16)
    out, lse = flex_attention(q, k, v, score, bm, return_lse=True)
    assert torch.equal(out[:, :, 1::2], torch.zeros_like(out[:, :, 1::2]))
    assert torch.isneginf(lse[:, :, 1::2]).all() and torch.isfinite(lse[:, :, ::2]).all()
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.equal(grads[0][:, :, 1::2], torch.zeros_like(grads[0][:, :, 1::2]))


@pytest.mark.parametrize("mask", ["causal", "sliding_window", "document", "or", "per_head"])
@pytest.mark.parametrize("S,T,block", [(300, 300, 64), (256, 384, 128), (1000, 1000, 128)])
def test_block_mask_tensors_equal_reference(mask, S, T, block):
    mm = MASKS[mask]
    if mask == "document" and T > 300:
        mm = make_document([0, 100, T // 2 + 1, T - 10, T])
    B, H = (2, 4) if mask == "per_head" else (None, None)
    ours = create_block_mask(mm, B, H, S, T, BLOCK_SIZE=block)
    theirs = ref.create_block_mask(mm, B, H, S, T, device="cpu", BLOCK_SIZE=block)
    for name in BLOCK_TENSORS:
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    assert ours.sparsity() == pytest.approx(theirs.sparsity())
    assert torch.equal(ours.to_dense(), theirs.to_dense())
    assert ours.to_string() == theirs.to_string()
    assert ours.shape == theirs.shape
    assert torch.equal(create_mask(mm, B, H, S, T), ref.create_mask(mm, B, H, S, T, "cpu"))


def test_causal_block_structure():
    bm = create_block_mask(make_causal(), None, None, 1024, 1024)
    assert bm.kv_num_blocks.flatten().tolist() == [1] * 8
    assert bm.full_kv_num_blocks.flatten().tolist() == list(range(8))
    assert bm.sparsity() == pytest.approx(100 * (1 - 36 / 64))
    assert make_sliding_window(64).__name__ == "sliding_window_64"


def _paged_cache(lens, page, n_pages, H, D, order, seed):
    """A PagedAttention whose sequences grow in `order` (interleaving their pages), the
    contiguous k, v and the cache holding them."""
    B, T = len(lens), max(lens)
    pa = PagedAttention(n_pages=n_pages, page_size=page, max_batch_size=B)
    for step in range(0, T, page):
        for b in order:
            if step < lens[b]:
                pa.reserve(b, min(step + page, lens[b]))
    q, k, v = _qkv(B, H, H, T, T, D, seed=seed)
    k_cache, v_cache = torch.zeros(1, H, n_pages * page, D), torch.zeros(1, H, n_pages * page, D)
    for b in range(B):
        n = lens[b]
        pos = torch.arange(n)[None]
        pa.assign(
            torch.tensor([b]), pos, k[b : b + 1, :, :n], v[b : b + 1, :, :n], k_cache, v_cache
        )
    return pa, q, k, v, k_cache, v_cache


def test_paged_attention_equals_contiguous():
    lens = [70, 100, 45]
    pa, q, k, v, k_cache, v_cache = _paged_cache(lens, 32, 16, 2, 16, range(3), seed=1)
    lens_t = torch.tensor(lens)

    def in_seq(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (kv_idx < lens_t[b])

    for mm in (in_seq, and_masks(in_seq, make_sliding_window(40))):
        bm = create_block_mask(mm, 3, None, 100, 100, BLOCK_SIZE=32)
        pbm = pa.convert_logical_block_mask(bm)
        for sm in (None, make_softcap(3.0)):
            paged = flex_attention(q, k_cache, v_cache, sm, pbm)
            for plan in (None, "stream") if sm is None else ("stream",):
                contiguous = flex_attention(q, k, v, sm, bm, kernel_options={"plan": plan})
                torch.testing.assert_close(contiguous, paged, atol=1e-6, rtol=0)
    pa.erase(1)
    assert (pa.page_table[1] == -1).all() and len(pa.empty_pages) == 16 - 5


@pytest.mark.parametrize("score", [None, make_softcap(3.0)])
def test_paged_sequences_never_read_each_others_pages(score):
    """Two sequences with interleaved pages, one BlockMask broadcast over both: sequence 0
    reserved 2 pages, sequence 1 four (and page 0 is sequence 1's). Logical blocks 2 and 3
    of sequence 0 have no page: they must not be read (they were clamped to page 0, and as
    full blocks skipped the mask_mod, so sequence 0 attended to sequence 1's keys)."""
    lens, page = [64, 128], 32
    pa, q, k, v, k_cache, v_cache = _paged_cache(lens, page, 8, 2, 16, order=(1, 0), seed=2)
    assert pa.page_table[1, 0] == 0 and pa.page_table[0, :2].tolist() == [1, 3]
    bm = create_block_mask(noop_mask, None, None, 128, 128, BLOCK_SIZE=page)
    pbm = pa.convert_logical_block_mask(bm)
    assert pbm.full_kv_num_blocks[:, 0, 0].tolist() == [2, 4]
    out = flex_attention(q, k_cache, v_cache, score, pbm)
    for b, n in enumerate(lens):  # each sequence sees its own keys only
        expected, _ = dense_flex_attention(
            q[b : b + 1], k[b : b + 1, :, :n], v[b : b + 1, :, :n], score
        )
        torch.testing.assert_close(out[b : b + 1], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mask", ["causal", "sliding_window_8", "prefix_lm_6", "document_10"])
def test_core_model_flex_equals_dense_and_decodes(mask):
    torch.manual_seed(0)
    kw = dict(vocab_size=40, n_layer=2, n_head=4, n_kv_head=2, d_model=32, mask=mask)
    flex = Transformer(ModelConfig(attention="flex", mixer_kwargs={"flex_block_size": 8}, **kw))
    dense = Transformer(ModelConfig(attention="flex_dense", **kw))
    dense.load_state_dict(flex.state_dict())
    x = torch.randint(0, 40, (2, 30))
    torch.testing.assert_close(flex(x), dense(x), atol=1e-5, rtol=1e-5)
    if mask == "causal":
        sdpa = Transformer(ModelConfig(attention="sdpa", **kw))
        sdpa.load_state_dict(flex.state_dict())
        torch.testing.assert_close(flex(x), sdpa(x), atol=1e-5, rtol=1e-5)
    # Decoding with the KV cache, one token at a time after a prompt, equals a full forward.
    cache = flex.new_cache(2, 30) if hasattr(flex, "new_cache") else None
    if cache is None:
        pytest.skip("Transformer has no new_cache")
    logits = [flex(x[:, :20], cache=cache)]
    for t in range(20, 30):
        logits.append(flex(x[:, t : t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(logits, 1), dense(x), atol=1e-5, rtol=1e-5)


def test_unknown_mask_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown attention variant 'diagonal_3'"):
        Transformer(ModelConfig(attention="flex", mask="diagonal_3"))
    mm, sm = parse_variant("sliding_window_64+softcap_30")
    assert mm.__name__ == "sliding_window_64" and sm.__name__ == "softcap_30"


def test_smoke_preset_end_to_end(tmp_path):
    cfg = PAPER.presets["smoke"]
    results = PAPER.run(cfg, RunDir("flexattn", cfg, root=tmp_path))
    by_claim = {r.claim: r for r in results}
    gap = next(r for c, r in by_claim.items() if c.startswith("max |loss"))
    assert gap.verdict == "pass" and gap.mean < 1e-3
    assert all(math.isfinite(r.mean) for r in results)


def test_bad_plans_and_mods_are_clear_errors():
    q, k, v = _qkv(1, 2, 2, 64, 64, 8)
    bm = create_block_mask(make_causal(), None, None, 64, 64, BLOCK_SIZE=16)
    with pytest.raises(ValueError, match="must be 'calls' or 'stream'"):
        flex_attention(q, k, v, block_mask=bm, kernel_options={"plan": "buckets"})
    with pytest.raises(ValueError, match="without a score_mod only"):
        flex_attention(q, k, v, make_softcap(2.0), bm, kernel_options={"plan": "calls"})

    def checkerboard(b, h, q_idx, kv_idx):  # blocks on 16 diagonals: too many calls
        return (q_idx // 16 + kv_idx // 16) % 2 == 0

    scattered = create_block_mask(checkerboard, None, None, 256, 256, BLOCK_SIZE=16)
    q2, k2, v2 = _qkv(1, 2, 2, 256, 256, 8)
    with pytest.raises(ValueError, match="too many fused calls"):
        flex_attention(q2, k2, v2, block_mask=scattered, kernel_options={"plan": "calls"})
    exp, _ = dense_flex_attention(q2, k2, v2, None, checkerboard)  # the default: stream
    torch.testing.assert_close(flex_attention(q2, k2, v2, block_mask=scattered), exp)
    table = torch.zeros(3)

    def reads_past_table(score, b, h, q_idx, kv_idx):
        return score + table[q_idx + 5]

    with pytest.raises(ValueError, match="failed on scalar indices"):
        flex_attention(q.requires_grad_(), k, v, reads_past_table, bm)
