"""Evaluating mask_mods and score_mods with torch's semantics.

torch's flex_attention treats `mask_mod(b, h, q_idx, kv_idx)` and `score_mod(score, b, h,
q_idx, kv_idx)` as functions of *scalars* and vectorises them with `torch.vmap` (its
`_vmap_for_bhqkv`). A mod written for that, e.g. one that looks up a row of a table and
takes its element [0], fails or silently changes meaning when it is called once on
broadcast index tensors instead. So every mod is evaluated here through nested vmaps over
the grid, exactly as torch does, unless it is known to give the same result when called
on broadcast tensors: the library's own variants (`masks.py`) declare that with
`mark_broadcastable`, and compositions of such mods inherit it. Broadcasting is only the
fast path (one call instead of vmap's batching), never a different answer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["is_broadcastable", "mark_broadcastable", "mask_values", "score_values"]

_FLAG = "_flex_broadcastable"


def mark_broadcastable(fn: Callable) -> Callable:
    """Declares that `fn` on broadcast index tensors equals `fn` vmapped over scalars.

    Only for mods made of elementwise operations and gathers by index (`table[q_idx]`
    with a 1-D table), as the library's variants are.
    """
    setattr(fn, _FLAG, True)
    return fn


def is_broadcastable(fn: Callable | None) -> bool:
    return fn is None or bool(getattr(fn, _FLAG, False))


def _vmapped(fn: Callable, args: tuple[Tensor, ...], ndim: int) -> Tensor:
    """fn applied to every element of the equally-shaped `args`, nested vmaps over ndim dims."""
    for _ in range(ndim):
        fn = torch.vmap(fn, in_dims=0, out_dims=0)
    return fn(*args)


def mask_values(mask_mod: Callable, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
    """mask_mod on the grid spanned by broadcastable index tensors -> bool.

    Returns:
        The broadcast shape of the indices; the fast path may leave size-1 dims where the
        mod ignores an index (callers broadcast).
    """
    if is_broadcastable(mask_mod):
        out = torch.as_tensor(mask_mod(b, h, q_idx, kv_idx), device=q_idx.device)
        return out.to(torch.bool)
    shape = torch.broadcast_shapes(b.shape, h.shape, q_idx.shape, kv_idx.shape)
    args = tuple(x.expand(shape) for x in (b, h, q_idx, kv_idx))
    return _vmapped(mask_mod, args, len(shape)).to(torch.bool)


def score_values(
    score_mod: Callable, score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor
) -> Tensor:
    """score_mod on `score` (the grid's shape) with broadcastable index tensors."""
    if is_broadcastable(score_mod):
        return score_mod(score, b, h, q_idx, kv_idx)
    args = (score, *(x.expand(score.shape) for x in (b, h, q_idx, kv_idx)))
    return _vmapped(score_mod, args, score.dim())
