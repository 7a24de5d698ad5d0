"""Decode attention over the paged KV cache: a C++ kernel (csrc/paged_attention.cpp) and the
torch formulation it replaces.

Decoding on a CPU is memory-bound, and the torch formulation moves each sequence's KV bytes
three times (gather them out of their blocks into a padded tensor, write it, read it in SDPA).
The kernel reads every key and value once, through the block table, with an online softmax
per block. It is built on first use (`kernels.load_kernel`); where it cannot be built,
`paged_decode_attention(..., backend="auto")` uses the torch path and says why once.

    out = paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens)

q (B, H, D); k_cache / v_cache (num_blocks, block_size, H_kv, D); block_tables (B, max_blocks)
int32/int64 (row b lists sequence b's blocks in order; entries past its length are ignored);
context_lens (B,) int64. Query head i uses KV head i // (H / H_kv), as in HF's
`repeat_kv`. Returns (B, H, D).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from minirepro.papers.serve.kernels import kernel_available, load_kernel

__all__ = [
    "BACKENDS",
    "attend_paged",
    "kernel_fits",
    "paged_decode_attention",
    "torch_decode_attention",
]

BACKENDS = ("auto", "kernel", "torch")


def kernel_fits(cache: Tensor, head_dim: int) -> bool:
    """Whether the kernel can read a KV cache like `cache` (float32 or bfloat16, CPU,
    contiguous, D % 8)."""
    return (
        cache.dtype in (torch.float32, torch.bfloat16)
        and cache.device.type == "cpu"
        and cache.is_contiguous()
        and head_dim % 8 == 0
    )


def _used_blocks(block_tables: Tensor, lens: Tensor, bs: int) -> tuple[Tensor, Tensor]:
    """(the first nb columns of the tables, True where sequence b reads column j)."""
    nb = -(-int(lens.max()) // bs)
    table = block_tables[:, :nb].long()
    return table, torch.arange(nb, device=table.device)[None, :] < (lens[:, None] + bs - 1) // bs


def torch_decode_attention(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    scale: float | None = None,
) -> Tensor:
    """The torch formulation: gather blocks into a padded batch, masked SDPA (any dtype)."""
    B, H, D = q.shape
    _, bs, Hkv, _ = k_cache.shape
    T = int(context_lens.max())
    table, needed = _used_blocks(block_tables, context_lens, bs)
    table = torch.where(needed, table, 0)  # entries past a sequence's length may be anything
    nb = table.shape[1]
    kd = k_cache.index_select(0, table.reshape(-1)).view(B, nb * bs, Hkv, D)[:, :T]
    vd = v_cache.index_select(0, table.reshape(-1)).view(B, nb * bs, Hkv, D)[:, :T]
    mask = (torch.arange(T, device=q.device)[None, :] < context_lens[:, None])[:, None, None, :]
    qd = q.view(B, Hkv, H // Hkv, D)  # the G heads of a KV head as G queries of that head
    y = F.scaled_dot_product_attention(
        qd, kd.transpose(1, 2), vd.transpose(1, 2), attn_mask=mask, scale=scale
    )
    return y.reshape(B, H, D)


def _check(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, lens: Tensor):
    if q.dim() != 3:
        raise ValueError(f"q must be (B, H, D), got shape {tuple(q.shape)}")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            "k_cache and v_cache must both be (num_blocks, block_size, H_kv, D), got "
            f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    B, H, D = q.shape
    Hkv = k_cache.shape[2]
    if k_cache.shape[3] != D or H % Hkv:
        raise ValueError(
            f"q (B, H={H}, D={D}) does not fit a cache of H_kv={Hkv}, D={k_cache.shape[3]}"
        )
    if block_tables.dim() != 2 or block_tables.shape[0] != B:
        raise ValueError(
            f"block_tables must be (B={B}, max_blocks), got {tuple(block_tables.shape)}"
        )
    if lens.shape != (B,):
        raise ValueError(f"context_lens must be (B={B},), got {tuple(lens.shape)}")
    if not B:
        return
    bs, cap = k_cache.shape[1], block_tables.shape[1] * k_cache.shape[1]
    if int(lens.min()) < 1 or int(lens.max()) > cap:
        raise ValueError(
            f"context lengths must lie in [1, {cap}] (max_blocks x block_size), got {lens.tolist()}"
        )
    table, needed = _used_blocks(block_tables, lens, bs)
    bad = needed & ((table < 0) | (table >= k_cache.shape[0]))
    if bad.any():
        b = int(bad.any(1).nonzero()[0])
        raise ValueError(
            f"block id out of range [0, {k_cache.shape[0]}) in sequence {b}'s block table: "
            f"{table[b][needed[b]].tolist()}"
        )


def attend_paged(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    use_kernel: bool,
    scale: float | None = None,
) -> Tensor:
    """`paged_decode_attention` without its input checks, for callers that built the inputs
    themselves (the engine's runner, every layer of every step). context_lens: int64."""
    if not use_kernel or q.shape[0] == 0:
        return torch_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return load_kernel().paged_decode_attention(
        q, k_cache, v_cache, block_tables, context_lens, scale
    )


def paged_decode_attention(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    scale: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """One query token per sequence attending to its paged keys and values.

    Args:
        backend: "kernel" (the C++ kernel; raises if it cannot be built), "torch" (gather +
            SDPA), or "auto" (the kernel for a float32 q and a float32 or bfloat16
            CPU cache when it builds, else torch).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    context_lens = context_lens.to(torch.long)
    _check(q, k_cache, v_cache, block_tables, context_lens)
    fits = q.dtype == torch.float32 and q.device.type == "cpu"
    fits = fits and kernel_fits(k_cache, q.shape[-1]) and kernel_fits(v_cache, q.shape[-1])
    fits = fits and k_cache.dtype == v_cache.dtype
    if backend == "kernel" and not fits:
        raise ValueError(
            "the paged attention kernel needs a float32 q, a float32 or bfloat16 cache "
            "(contiguous, CPU) and a head_dim that is a multiple of 8 (got q "
            f"{q.dtype}, cache {k_cache.dtype}, {q.device}, head_dim {q.shape[-1]})"
        )
    use_kernel = backend == "kernel" or (backend == "auto" and fits and kernel_available())
    return attend_paged(q, k_cache, v_cache, block_tables, context_lens, use_kernel, scale)
