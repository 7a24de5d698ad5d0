"""Classifier-free guidance for continuous and discrete flow models.

One model is trained with its condition dropped (replaced by a null label) some of the time,
so it learns both the conditional and the unconditional field (Ho & Salimans 2022; guide,
Sec. 4.9 for the flow version). At sampling time, with guidance weight w:

- continuous: u_w = (1 - w) u(x, t, null) + w u(x, t, y);
- discrete: p_w is proportional to p(. | x_t, null)^(1 - w) p(. | x_t, y)^w, per coordinate:
  the same rule applied to log-posteriors, which is what a mixture-path sampler consumes.

w = 0 is the unconditional model, w = 1 the conditional one, w > 1 sharpens the condition.
Both wrappers run the two branches as one batch of 2B.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["GuidedPosterior", "GuidedVelocity", "drop_labels"]


def drop_labels(
    y: Tensor, p_drop: float, null_label: int, generator: torch.Generator | None = None
) -> Tensor:
    """Replaces each label by `null_label` with probability p_drop (for CFG training)."""
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p_drop
    return torch.where(drop, torch.full_like(y, null_label), y)


def _both_branches(
    model: Callable[..., Tensor], x: Tensor, t: Tensor, y: Tensor, null_label: int
) -> tuple[Tensor, Tensor]:
    """Model outputs (unconditional, conditional), computed as one batch."""
    b = x.shape[0]
    t = torch.as_tensor(t, device=x.device)
    t2 = t.expand(b).repeat(2) if t.ndim == 0 else t.repeat(2)
    y2 = torch.cat([torch.full_like(y, null_label), y])
    out = model(torch.cat([x, x]), t2, y=y2)
    return out[:b], out[b:]


class _Guided(nn.Module, ABC):
    """Runs the conditional and unconditional branches and mixes them with weight w."""

    def __init__(self, model: nn.Module, weight: float, null_label: int) -> None:
        super().__init__()
        self.model, self.weight, self.null_label = model, float(weight), null_label

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        if self.weight == 1.0:  # the conditional model alone: one branch suffices
            return self.model(x, t, y=y)
        if self.weight == 0.0:
            return self.model(x, t, y=torch.full_like(y, self.null_label))
        return self.combine(*_both_branches(self.model, x, t, y, self.null_label))

    @abstractmethod
    def combine(self, out_null: Tensor, out_cond: Tensor) -> Tensor:
        """The guided output from the unconditional and conditional outputs."""


class GuidedVelocity(_Guided):
    """u_w(x, t, y) = (1 - w) u(x, t, null) + w u(x, t, y).

    Args:
        model: `model(x, t, y=labels)` returns velocities (B, ...).
        weight: Guidance weight w.
        null_label: The label the model was trained with for "no condition".
    """

    def combine(self, out_null: Tensor, out_cond: Tensor) -> Tensor:
        return (1 - self.weight) * out_null + self.weight * out_cond


class GuidedPosterior(_Guided):
    """Guided posterior logits: (1 - w) log p(. | null) + w log p(. | y), per coordinate.

    The result are logits (normalised by the sampler's softmax).

    Args:
        model: `model(x, t, y=labels)` returns posterior logits (B, ..., K).
        weight: Guidance weight w.
        null_label: The label the model was trained with for "no condition".
    """

    def combine(self, out_null: Tensor, out_cond: Tensor) -> Tensor:
        w = self.weight
        return (1 - w) * torch.log_softmax(out_null, -1) + w * torch.log_softmax(out_cond, -1)
