"""Training losses: velocity regression (continuous) and the generalized KL (mixture paths).

Both are Bregman-divergence losses of the guide (Sec. 4.5 and 7.5): minimising them makes the
model the conditional expectation of the target, the marginal velocity or the posterior
p_{1|t}, without simulating the flow.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from minirepro.papers.flow.discrete import MixtureDiscretePath

__all__ = ["generalized_kl", "velocity_mse"]

Reduction = Literal["mean", "sum", "none"]


def _reduce(loss: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def velocity_mse(pred: Tensor, target: Tensor, reduction: Reduction = "mean") -> Tensor:
    """Conditional flow matching loss: squared error of the velocity, (B, ...) each.

    With "mean", the mean over all elements (the reference's convention); "none" returns the
    per-element squared errors.
    """
    return _reduce((pred - target).square(), reduction)


def generalized_kl(
    logits: Tensor,
    x_1: Tensor,
    x_t: Tensor,
    t: Tensor,
    path: MixtureDiscretePath,
    reduction: Reduction = "mean",
) -> Tensor:
    """The generalized KL between the conditional and the model's rates on a mixture path.

    Per coordinate, with lambda_t = d_kappa_t / (1 - kappa_t) and p = p_{1|t}(. | x_t):

        loss = -lambda_t * (p(x_t) - [x_t = x_1] + [x_t != x_1] log p(x_1)).

    Args:
        logits: Posterior logits (B, ..., K).
        x_1: Target tokens (B, ...).
        x_t: Path tokens (B, ...).
        t: Times (B,).
        path: The mixture path that produced x_t.
        reduction: "mean" over coordinates, "sum", or "none" (B, ...).

    Returns:
        The loss.
    """
    log_p = torch.log_softmax(logits, dim=-1)
    log_p_x1 = log_p.gather(-1, x_1.unsqueeze(-1)).squeeze(-1)
    p_xt = log_p.gather(-1, x_t.unsqueeze(-1)).squeeze(-1).exp()
    rate = path.jump_rate(t).view(-1, *([1] * (x_1.ndim - 1)))
    # -p(x_t) is the model's total rate of leaving x_t (always counted); log p(x_1) rewards
    # the jump the conditional path makes, wherever x_t is not yet x_1.
    same = x_t == x_1
    loss = -rate * torch.where(same, p_xt - 1, p_xt + log_p_x1)
    return _reduce(loss, reduction)
