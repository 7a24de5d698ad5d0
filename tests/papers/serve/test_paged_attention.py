"""The paged decode-attention kernel and its torch path against attention written out per
sequence (keys listed position by position through the block table)."""

import math

import pytest
import torch

from minirepro.papers.serve.paged_attention import paged_decode_attention


def naive(q, k_cache, v_cache, tables, lens):
    """Softmax attention of each sequence's query over its positions 0 .. len-1."""
    B, H, D = q.shape
    bs, Hkv = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty(B, H, D, dtype=torch.float64)
    for b in range(B):
        pos = torch.arange(int(lens[b]))
        blocks = tables[b].long()[pos // bs]
        k = k_cache[blocks, pos % bs].double()  # (L, Hkv, D)
        v = v_cache[blocks, pos % bs].double()
        for h in range(H):
            kv = h // (H // Hkv)  # HF repeat_kv: query head h reads KV head h // G
            w = torch.softmax(k[:, kv] @ q[b, h].double() / math.sqrt(D), 0)
            out[b, h] = w @ v[:, kv]
    return out


def case(B, H, Hkv, D, bs, num_blocks, max_len, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(num_blocks, bs, Hkv, D, generator=g).to(dtype)
    v = torch.randn(num_blocks, bs, Hkv, D, generator=g).to(dtype)
    q = (2 * torch.randn(B, H, D, generator=g)).to(dtype)  # peaked enough to matter
    lens = torch.randint(1, max_len + 1, (B,), generator=g)
    nb = -(-max_len // bs)
    tables = torch.stack([torch.randperm(num_blocks, generator=g)[:nb] for _ in range(B)])
    return q, k, v, tables, lens


SHAPES = [  # B, H, H_kv, D, block_size, num_blocks, max_len
    (5, 9, 3, 64, 16, 64, 200),  # SmolLM2's heads
    (3, 4, 4, 32, 8, 40, 100),  # no GQA
    (4, 8, 2, 16, 4, 100, 60),
    (2, 6, 1, 24, 5, 30, 33),  # multi-query, odd block size
    (1, 2, 1, 8, 1, 50, 40),  # one position per block
    (7, 4, 2, 128, 32, 12, 64),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend", ["kernel", "torch"])
def test_matches_attention_per_sequence(kernel, shape, backend):
    q, k, v, tables, lens = case(*shape, seed=sum(shape))
    out = paged_decode_attention(q, k, v, tables, lens, backend=backend)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.double(), naive(q, k, v, tables, lens), atol=2e-5, rtol=1e-5)


def test_int32_tables_lengths_at_block_edges_and_scale(kernel):
    q, k, v, tables, _ = case(6, 4, 2, 16, 8, 32, 24, seed=3)
    lens = torch.tensor([1, 7, 8, 9, 16, 24])
    a = paged_decode_attention(q, k, v, tables.int(), lens, backend="kernel")
    torch.testing.assert_close(a.double(), naive(q, k, v, tables, lens), atol=2e-5, rtol=1e-5)
    s = paged_decode_attention(q, k, v, tables, lens, scale=0.1, backend="kernel")
    ref = paged_decode_attention(q * (0.1 * 4), k, v, tables, lens, backend="torch")  # sqrt(16)
    torch.testing.assert_close(s, ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["kernel", "torch"])
def test_entries_past_the_length_are_not_read(kernel, backend):
    """Padding entries of a block table may name any block (the engine pads with 0)."""
    q, k, v, tables, lens = case(3, 4, 2, 16, 4, 20, 12, seed=5)
    lens = torch.tensor([3, 5, 12])
    padded = tables.clone()
    padded[0, 1:] = 10_000  # out of range, but past sequence 0's single block
    a = paged_decode_attention(q, k, v, padded, lens, backend=backend)
    torch.testing.assert_close(a, paged_decode_attention(q, k, v, tables, lens, backend=backend))


def test_auto_falls_back_for_other_dtypes_and_head_dims():
    q, k, v, tables, lens = case(3, 4, 2, 12, 4, 20, 12, seed=1)  # head_dim 12: not % 8
    out = paged_decode_attention(q, k, v, tables, lens)
    torch.testing.assert_close(out.double(), naive(q, k, v, tables, lens), atol=2e-5, rtol=1e-5)
    q, k, v, tables, lens = case(3, 4, 2, 16, 4, 20, 12, seed=2, dtype=torch.float64)
    out = paged_decode_attention(q, k, v, tables, lens)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, naive(q, k, v, tables, lens), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda q, k, v, t, n: (q[0], k, v, t, n), "q must be"),
        (lambda q, k, v, t, n: (q, k, v[:, :2], t, n), "k_cache and v_cache"),
        (lambda q, k, v, t, n: (q[:, :3], k, v, t, n), "does not fit"),
        (lambda q, k, v, t, n: (q, k, v, t[:2], n), "block_tables"),
        (lambda q, k, v, t, n: (q, k, v, t, n[:2]), "context_lens"),
        (lambda q, k, v, t, n: (q, k, v, t, n * 0), "context lengths"),
        (lambda q, k, v, t, n: (q, k, v, t, n + 1000), "context lengths"),
        (lambda q, k, v, t, n: (q, k, v, t + 500, n), "block id"),
        (lambda q, k, v, t, n: (q, k, v, t - 500, n), "block id"),
    ],
)
@pytest.mark.parametrize("backend", ["kernel", "torch"])
def test_bad_input_names_the_problem(kernel, mutate, message, backend):
    args = mutate(*case(3, 4, 2, 16, 4, 20, 12, seed=0))
    with pytest.raises(ValueError, match=message):
        paged_decode_attention(*args, backend=backend)


def test_kernel_backend_refuses_what_it_cannot_run(kernel):
    q, k, v, tables, lens = case(2, 4, 2, 16, 4, 20, 12, seed=0, dtype=torch.float64)
    with pytest.raises(ValueError, match="float32"):
        paged_decode_attention(q, k, v, tables, lens, backend="kernel")
    with pytest.raises(ValueError, match="backend"):
        paged_decode_attention(q, k, v, tables, lens, backend="cuda")
