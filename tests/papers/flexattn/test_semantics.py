"""mask_mod / score_mod semantics as torch's (functions of scalars, vmapped), BlockMask
indexing, and the torch reference's own (uncompiled) flex_attention as the oracle."""

import zlib

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import flex_attention as ref

from minirepro.papers.flexattn import (
    create_block_mask,
    create_mask,
    flex_attention,
    make_causal,
    make_document,
)
from minirepro.papers.flexattn.block_mask import _TENSOR_ATTRS as BLOCK_TENSORS
from minirepro.papers.flexattn.mods import is_broadcastable
from minirepro.papers.flexattn.reference import dense_flex_attention

Q_LEN, KV_LEN = 100, 300


def _seed(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


def _intervals(n_q: int, n_kv: int, g: torch.Generator) -> torch.Tensor:
    """(n_q, 2): query i of a cross-attention reads keys [start, end) of the context."""
    start = torch.randint(0, n_kv - 40, (n_q,), generator=g)
    return torch.stack([start, start + torch.randint(1, 40, (n_q,), generator=g)], 1)


def _interval_mask(table):
    def cross_attention(b, h, q_idx, kv_idx):
        row = table[q_idx]  # a row of the table, then its elements: scalar semantics
        return (kv_idx >= row[0]) & (kv_idx < row[1])

    return cross_attention


def _reduced_row_mask(table):
    def up_to_row_total(b, h, q_idx, kv_idx):
        # Scalars: the sum of query q's row. On broadcast index tensors, .sum() would add
        # up every gathered row and give one bound for all queries, silently.
        return kv_idx < table[q_idx].sum()

    return up_to_row_total


@pytest.mark.parametrize(
    "make,n_q,n_kv,block",
    [
        (_interval_mask, Q_LEN, KV_LEN, 32),
        (_interval_mask, 64, 64, 16),
        (_reduced_row_mask, 64, 96, 16),
    ],
)
def test_mask_mod_indexing_a_table_equals_torch(make, n_q, n_kv, block):
    """torch calls mask_mods on scalars (vmap): `table[q_idx][0]` is the row's first entry
    and `table[q_idx].sum()` the row's sum. Called once on broadcast index tensors, the
    first raised a shape error and the second silently gave another mask."""
    mm = make(_intervals(n_q, n_kv, _seed(f"intervals{n_q}")) // 3)
    assert not is_broadcastable(mm)
    ours = create_block_mask(mm, None, None, n_q, n_kv, BLOCK_SIZE=block)
    theirs = ref.create_block_mask(mm, None, None, n_q, n_kv, device="cpu", BLOCK_SIZE=block)
    for name in BLOCK_TENSORS:
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    dense = create_mask(mm, None, None, n_q, n_kv)
    assert torch.equal(dense, ref.create_mask(mm, None, None, n_q, n_kv, "cpu"))
    q, k, v = (torch.randn(2, 2, n, 16, generator=_seed("qkv")) for n in (n_q, n_kv, n_kv))
    expect = F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    for plan in ("calls", "stream"):  # the tiles of both strategies come from the same mods
        out = flex_attention(q, k, v, block_mask=ours, kernel_options={"plan": plan})
        torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-5)


def test_score_mod_indexing_a_table_equals_torch():
    """A score_mod that reads a row of a per-query table, then its element [1]."""
    table = torch.randn(Q_LEN, 2, generator=_seed("bias"))

    def row_bias(score, b, h, q_idx, kv_idx):
        return score + table[q_idx][1] * (kv_idx % 7)

    q, k, v = (torch.randn(1, 2, n, 16, generator=_seed("sm")) for n in (Q_LEN, KV_LEN, KV_LEN))
    q.requires_grad_()
    bm = create_block_mask(make_causal(), None, None, Q_LEN, KV_LEN, BLOCK_SIZE=32)
    out, lse = flex_attention(q, k, v, row_bias, bm, return_lse=True)
    # torch's own flex_attention semantics, uncompiled (its math path vmaps the mods).
    with torch.no_grad():
        r_out, r_lse = _torch_eager(q.detach(), k, v, row_bias, make_causal(), Q_LEN, KV_LEN, 32)
    torch.testing.assert_close(out, r_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, r_lse, atol=1e-5, rtol=1e-5)
    bias = table[:, 1, None] * (torch.arange(KV_LEN) % 7)  # (Q, KV), written out by hand
    allowed = torch.arange(Q_LEN)[:, None] >= torch.arange(KV_LEN)
    expect = F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias.masked_fill(~allowed, float("-inf"))
    )
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-5)
    got = torch.autograd.grad(out.sum(), q)[0]
    want = torch.autograd.grad(expect.sum(), q)[0]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def _torch_eager(q, k, v, score_mod, mask_mod, S, T, block, enable_gqa=False):
    """torch's flex_attention without compiling: its reference math (dense, vmapped mods)."""
    bm = ref.create_block_mask(mask_mod, None, None, S, T, device="cpu", BLOCK_SIZE=block)
    flag = ref._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG
    ref._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = True
    try:
        out, aux = ref.flex_attention(
            q, k, v, score_mod, block_mask=bm, enable_gqa=enable_gqa,
            return_aux=ref.AuxRequest(lse=True),
        )  # fmt: skip
        return out, aux.lse
    finally:
        ref._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = flag


def per_batch_head(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & ((kv_idx + b + h) % 3 != 0)


@pytest.mark.parametrize("index", [1, -1, (1, 2), (slice(0, 2), 1), (slice(None), slice(1, 3))])
def test_block_mask_indexing_equals_torch(index):
    B, H, S = 3, 4, 96
    ours = create_block_mask(per_batch_head, B, H, S, S, BLOCK_SIZE=32)
    theirs = ref.create_block_mask(per_batch_head, B, H, S, S, device="cpu", BLOCK_SIZE=32)
    mine, torchs = ours[index], theirs[index]
    for name in BLOCK_TENSORS:
        assert torch.equal(getattr(mine, name), getattr(torchs, name)), name
    assert mine.shape == torchs.shape
    assert mine.to_string() == torchs.to_string()
    # The indexed mask still runs: its mask_mod maps (b, h) back to the original ones.
    idx = index if isinstance(index, tuple) else (index,)
    idx = tuple(slice(i % n, i % n + 1) if isinstance(i, int) else i for i, n in zip(idx, (B, H)))
    q, k, v = (torch.randn(B, H, S, 16, generator=_seed(str(index))) for _ in range(3))
    full = flex_attention(q, k, v, block_mask=ours)
    part = flex_attention(*(x[idx] for x in (q, k, v)), block_mask=mine)
    torch.testing.assert_close(part, full[idx], atol=1e-6, rtol=0)


def test_block_mask_indexing_errors():
    bm = create_block_mask(make_document([0, 40, 96]), 2, None, 96, 96, BLOCK_SIZE=32)
    with pytest.raises(IndexError, match="out of range"):
        bm[2]
    with pytest.raises(IndexError, match="at most 3"):
        bm[0, 0, 0, 0]
    rows = bm[:, :, 1:2]
    assert rows.kv_num_blocks.shape == (2, 1, 1)
    with pytest.raises(RuntimeError, match="indexed along its query blocks"):
        rows.mask_mod(torch.tensor(0), torch.tensor(0), torch.tensor(0), torch.tensor(0))
    q = torch.randn(2, 1, 96, 8)
    dense, _ = dense_flex_attention(q, q, q, None, make_document([0, 40, 96]))
    torch.testing.assert_close(flex_attention(q, q, q, block_mask=bm[:, 0]), dense)
