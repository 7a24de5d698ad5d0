"""A slow, obviously correct oracle: the dense S x T score matrix, masked and softmaxed.

Used by the tests (outputs, LSE and gradients by autograd, score_mod parameters included).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from minirepro.papers.flexattn.block_mask import create_mask
from minirepro.papers.flexattn.masks import MaskMod, ScoreMod, noop_mask
from minirepro.papers.flexattn.mods import score_values


def dense_flex_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    score_mod: ScoreMod | None = None,
    mask_mod: MaskMod = noop_mask,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Dense attention with a score_mod and a mask_mod (no blocks at all).

    Args:
        query: (B, H, S, D). key, value: (B, H_kv, T, D), H a multiple of H_kv.
        score_mod: Applied to the scaled scores (torch's semantics, `mods.py`).
        mask_mod: Evaluated on the full (B, H, S, T) grid (likewise).
        scale: 1/sqrt(D) by default.

    Returns:
        out (B, H, S, Dv) and lse (B, H, S); fully masked rows give 0 and -inf.
    """
    B, H, S, D = query.shape
    group = H // key.shape[1]
    key, value = key.repeat_interleave(group, 1), value.repeat_interleave(group, 1)
    T = key.shape[2]
    scale = 1 / math.sqrt(D) if scale is None else scale
    scores = (query @ key.transpose(-1, -2)) * scale  # (B, H, S, T)
    if score_mod is not None:
        b = torch.arange(B)[:, None, None, None]
        h = torch.arange(H)[None, :, None, None]
        scores = score_values(score_mod, scores, b, h, torch.arange(S)[:, None], torch.arange(T))
    mask = create_mask(mask_mod, B, H, S, T, device=query.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    finite = torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)
    probs = torch.exp(scores - finite.unsqueeze(-1))  # 0 on fully masked rows
    return probs @ value, lse
