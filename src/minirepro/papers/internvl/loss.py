"""Loss weighting over the supervised tokens of a batch (InternVL 2.5, section 4.3).

A token of a sample with x supervised tokens gets weight w = 1 ("token": every token
counts alike, long answers dominate), 1/x ("sample": every sample counts alike, short
answers dominate) or 1/√x ("square", the paper's compromise); the loss is
Σ w·ℓ / Σ w over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["WEIGHTINGS", "loss_weights", "weighted_lm_loss"]

WEIGHTINGS = ("token", "sample", "square")


def loss_weights(labels: Tensor, mode: str) -> Tensor:
    """Per-token weights (B, S) for labels (B, S) with -100 on unsupervised positions."""
    if mode not in WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {mode!r}; choose from {WEIGHTINGS}")
    mask = (labels != -100).float()  # (B, S)
    x = mask.sum(-1, keepdim=True).clamp(min=1)  # (B, 1) supervised tokens per sample
    per_sample = {"token": torch.ones_like(x), "sample": 1 / x, "square": x.rsqrt()}[mode]
    return mask * per_sample


def weighted_lm_loss(logits: Tensor, labels: Tensor, mode: str = "square") -> Tensor:
    """Σ w·ℓ / Σ w of next-token cross-entropy.

    Args:
        logits: (B, S, V), position t predicting labels[:, t].
        labels: (B, S) target ids, -100 where unsupervised.
        mode: "token", "sample" or "square".
    Returns:
        The scalar loss ("token" equals the usual mean over supervised tokens).
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ")
    w = loss_weights(labels, mode)
    if not bool((w > 0).any()):
        raise ValueError("the batch has no supervised tokens")
    ce = F.cross_entropy(
        logits.flatten(0, 1).to(torch.promote_types(logits.dtype, torch.float32)),
        labels.flatten(),
        ignore_index=-100,
        reduction="none",
    ).view_as(w)  # (B, S)
    return (w * ce).sum() / w.sum()
