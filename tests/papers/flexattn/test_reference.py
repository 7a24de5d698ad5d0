"""Every variant of the library against torch's own flex_attention.

Forward (out and LSE) against torch's flex_attention run without compiling (its reference
math: dense, the mods vmapped over scalars), for GQA, Q_LEN != KV_LEN and lengths that
are not multiples of the block; backward against autograd through the dense oracle (torch
has no CPU backward). The same cases against the *compiled* torch flex_attention are
marked `slow`: each new mod costs one inductor compile (3-16 s on 2 cores, cold cache), one
compiled callable is shared by all of them. By default they run on three variants that cover
a plain mask, composed masks with composed scores, and per-head masks (the uncompiled
comparison above already covers every variant); `MINIREPRO_ALL_COMPILED=1` runs them all.
"""

import os
import zlib

import pytest
import torch
from torch.nn.attention import flex_attention as ref

from minirepro.papers.flexattn import (
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
    or_masks,
    parse_variant,
)
from minirepro.papers.flexattn.reference import dense_flex_attention

OFFSETS = [0, 30, 31, 100, 170, 300]


def per_head(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & (q_idx - kv_idx <= 16 * (h + 1))


VARIANTS = {
    # name: (mask_mod, score_mod)
    "causal": (make_causal(), None),
    "sliding_window": (make_sliding_window(37), None),
    "prefix_lm": (make_prefix_lm(50), None),
    "document": (make_document(OFFSETS), None),
    "document_bidir": (make_document(OFFSETS, causal=False), None),
    "document_len": (parse_variant("document_24")[0], None),
    "noop_alibi": (noop_mask, make_alibi(4)),
    "causal_softcap": (make_causal(), make_softcap(2.0)),
    "plus": parse_variant("sliding_window_20+document_64+alibi+softcap_5", n_head=4),
    "or": (or_masks(make_sliding_window(10), make_prefix_lm(20)), None),
    "and_per_head": (and_masks(per_head, make_document(OFFSETS)), make_softcap(4.0)),
}
SHAPES = {
    # name: B, H, H_kv, S, T, block
    "gqa_odd_length": (2, 4, 2, 200, 200, 64),
    "q_ne_kv": (1, 4, 1, 77, 150, 32),
}


def _inputs(variant: str, shape: str, grad: bool = False):
    B, H, Hkv, S, T, block = SHAPES[shape]
    g = torch.Generator().manual_seed(zlib.crc32(f"{variant}/{shape}".encode()))
    q = torch.randn(B, H, S, 16, generator=g)
    k, v = (torch.randn(B, Hkv, T, 16, generator=g) for _ in range(2))
    return [x.requires_grad_(grad) for x in (q, k, v)], (B, H, S, T, block)


def _torch_flex(fn, q, k, v, mm, sm, S, T, block):
    """torch's flex_attention, uncompiled -> out, lse."""
    bm = ref.create_block_mask(mm, None, q.shape[1], S, T, device="cpu", BLOCK_SIZE=block)
    with torch.no_grad():
        out, aux = fn(
            q, k, v, sm, block_mask=bm, enable_gqa=True, return_aux=ref.AuxRequest(lse=True)
        )
    return out, aux.lse


def _uncompiled(*args, **kwargs):
    flag = ref._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG
    ref._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = True  # torch's math path, no compile
    try:
        return ref.flex_attention(*args, **kwargs)
    finally:
        ref._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = flag


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_torch_flex_attention(variant, shape):
    mm, sm = VARIANTS[variant]
    (q, k, v), (B, H, S, T, block) = _inputs(variant, shape, grad=True)
    bm = create_block_mask(mm, None, H, S, T, BLOCK_SIZE=block)
    out, lse = flex_attention(q, k, v, sm, bm, enable_gqa=True, return_lse=True)
    r_out, r_lse = _torch_flex(_uncompiled, q.detach(), k.detach(), v.detach(), mm, sm, S, T, block)
    torch.testing.assert_close(out, r_out, atol=1e-5, rtol=1e-5)
    rows = torch.isfinite(r_lse)  # torch gives -inf or +inf... for rows with no key
    torch.testing.assert_close(lse[rows], r_lse[rows], atol=1e-5, rtol=1e-5)
    assert torch.isneginf(lse[~rows]).all()
    exp_out, _ = dense_flex_attention(q, k, v, sm, mm)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(zlib.crc32(b"do")))
    got = torch.autograd.grad(out, (q, k, v), do)
    want = torch.autograd.grad(exp_out, (q, k, v), do)
    for name, a, b in zip("qkv", got, want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"d{n}: {m}")


@pytest.fixture(scope="module")
def compiled_flex():
    """One compiled torch flex_attention for every case (recompiles per new mod only)."""
    return torch.compile(ref.flex_attention, dynamic=False)  # no symbolic captured floats


COMPILED_VARIANTS = (
    list(VARIANTS)
    if os.environ.get("MINIREPRO_ALL_COMPILED")
    else ["causal", "plus", "and_per_head"]
)


@pytest.mark.slow
@pytest.mark.parametrize("variant", COMPILED_VARIANTS)
def test_matches_compiled_torch_flex_attention(compiled_flex, variant):
    mm, sm = VARIANTS[variant]
    (q, k, v), (B, H, S, T, block) = _inputs(variant, "q_ne_kv")  # GQA 4:1, S != T, odd S
    bm = create_block_mask(mm, None, H, S, T, BLOCK_SIZE=block)
    out = flex_attention(q, k, v, sm, bm, enable_gqa=True)
    rbm = ref.create_block_mask(mm, None, H, S, T, device="cpu", BLOCK_SIZE=block)
    with torch.no_grad():  # compiled on the CPU: inference only, no LSE
        r_out = compiled_flex(q, k, v, sm, block_mask=rbm, enable_gqa=True)
    torch.testing.assert_close(out, r_out, atol=1e-5, rtol=1e-5)
