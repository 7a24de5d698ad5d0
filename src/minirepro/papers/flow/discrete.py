"""Discrete flow matching with mixture paths, and its Euler (CTMC) sampler.

The mixture path factorises over the d coordinates of a sequence of tokens: each coordinate
is still its source value x_0 with probability 1 - kappa_t and has jumped to its target x_1
with probability kappa_t (guide, Sec. 7.5). A model predicts the posterior p_{1|t}(x_1 | x_t)
per coordinate; the velocity (transition rate) that generates the marginal path is

    u_t(x | x_t) = d_kappa_t / (1 - kappa_t) * (p_{1|t}(x | x_t) - delta_{x_t}(x)).

The sampler draws x_1 from the posterior, then jumps to it with probability
1 - exp(-h * rate). A divergence-free term, which leaves every conditional path unchanged,
can add extra mixing: it is c_t (u_hat - u_check), where u_check = d_kappa_t / kappa_t
(delta_{x_t} - p_0) is the time-reversed generator of the same conditional path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from minirepro.papers.flow.schedulers import ConvexScheduler
from minirepro.papers.flow.solvers import make_time_grid

__all__ = [
    "DiscreteEulerSolver",
    "DiscretePathSample",
    "MixtureDiscretePath",
    "categorical",
    "uniform_source",
]


def categorical(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One draw per row from unnormalised weights (..., K) -> (...) int64."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, replacement=True, generator=generator).view(probs.shape[:-1])


@dataclass(frozen=True)
class DiscretePathSample:
    """A draw from a mixture path: x_0, x_1, x_t token ids (B, ...), t (B,)."""

    x_0: Tensor
    x_1: Tensor
    t: Tensor
    x_t: Tensor


class MixtureDiscretePath:
    """x_t = x_1 with probability kappa_t, else x_0, independently per coordinate.

    Args:
        scheduler: A convex scheduler; kappa_t is its alpha_t.
    """

    def __init__(self, scheduler: ConvexScheduler) -> None:
        if not isinstance(scheduler, ConvexScheduler):
            raise TypeError(f"a mixture path needs a ConvexScheduler, got {scheduler!r}")
        self.scheduler = scheduler

    def __repr__(self) -> str:
        return f"MixtureDiscretePath({self.scheduler!r})"

    def sample(
        self, x_0: Tensor, x_1: Tensor, t: Tensor, generator: torch.Generator | None = None
    ) -> DiscretePathSample:
        """Draws x_t given token ids x_0, x_1 (B, ...) and times t (B,)."""
        if x_0.shape != x_1.shape or t.shape != x_1.shape[:1]:
            raise ValueError(
                f"need x_0, x_1 of one shape (B, ...) and t (B,); got {tuple(x_0.shape)}, "
                f"{tuple(x_1.shape)}, {tuple(t.shape)}"
            )
        kappa = self.scheduler(t).alpha_t.view(-1, *([1] * (x_1.ndim - 1)))
        stay = torch.rand(x_1.shape, generator=generator, device=x_1.device) < 1 - kappa
        return DiscretePathSample(x_0=x_0, x_1=x_1, t=t, x_t=torch.where(stay, x_0, x_1))

    def jump_rate(self, t: Tensor) -> Tensor:
        """d_kappa_t / (1 - kappa_t), of t's shape."""
        s = self.scheduler(t)
        return s.d_alpha_t / (1 - s.alpha_t)

    def posterior_to_velocity(self, posterior_logits: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The transition rates u_t(. | x_t) from the model's posterior.

        Args:
            posterior_logits: Logits of p_{1|t}(. | x_t) (B, ..., K).
            x_t: Current tokens (B, ...).
            t: Times, a scalar or (B,).

        Returns:
            Rates (B, ..., K); each row sums to zero.
        """
        posterior = torch.softmax(posterior_logits, dim=-1)
        rate = self.jump_rate(torch.as_tensor(t, dtype=posterior.dtype, device=posterior.device))
        if rate.ndim == 1:
            rate = rate.view(-1, *([1] * (posterior.ndim - 1)))
        return rate * (posterior - F.one_hot(x_t, posterior.shape[-1]).to(posterior.dtype))


class DiscreteEulerSolver:
    """Euler sampling of the CTMC that a mixture-path posterior model generates.

    Args:
        model: `model(x, t, **extras)` with tokens x (B, ...) and t (B,) returns posterior
            logits (B, ..., K).
        path: The mixture path the model was trained on.
        vocab_size: K.
        source_p: The source distribution (K,), needed for a divergence-free term.
        logits: If False, the model returns probabilities instead of logits.
    """

    def __init__(
        self,
        model: Callable[..., Tensor],
        path: MixtureDiscretePath,
        vocab_size: int,
        source_p: Tensor | None = None,
        *,
        logits: bool = True,
    ) -> None:
        if source_p is not None and source_p.shape != (vocab_size,):
            raise ValueError(
                f"source_p must have shape ({vocab_size},), got {tuple(source_p.shape)}"
            )
        self.model = model
        self.path = path
        self.vocab_size = vocab_size
        self.source_p = source_p
        self.logits = logits

    def posterior(self, x: Tensor, t: Tensor, **extras: Any) -> Tensor:
        """p_{1|t}(. | x) (B, ..., K)."""
        out = self.model(x, t.expand(x.shape[0]), **extras)
        return torch.softmax(out.float(), dim=-1) if self.logits else out.float()

    @torch.no_grad()
    def sample(
        self,
        x_init: Tensor,
        *,
        step_size: float | None = None,
        n_steps: int | None = None,
        time_grid: Tensor | Sequence[float] = (0.0, 1.0),
        div_free: float | Callable[[Tensor], Tensor | float] = 0.0,
        return_intermediates: bool = False,
        generator: torch.Generator | None = None,
        **extras: Any,
    ) -> Tensor:
        """Simulates the CTMC from x_init at time_grid[0] to time_grid[-1].

        Args:
            x_init: Source tokens (B, ...).
            step_size: Uniform steps (the last one shortened).
            n_steps: Or this many equal steps; with neither, step through time_grid.
            time_grid: Increasing times; intermediates are reported at the step times
                nearest to them.
            div_free: Coefficient c_t of the divergence-free term (a number or a function of
                t); needs `source_p` when not zero.
            return_intermediates: Return (len(time_grid), B, ...).
            generator: Randomness of the posterior draws and the jumps.
            **extras: Passed to the model (e.g. class labels).

        Returns:
            Tokens at time_grid[-1] (B, ...), or the intermediates.
        """
        if (callable(div_free) or div_free != 0.0) and self.source_p is None:
            raise ValueError("a divergence-free term needs source_p")
        requested = torch.as_tensor(time_grid, dtype=torch.float32, device=x_init.device)
        steps = make_time_grid(requested, step_size, n_steps, device=x_init.device)
        report_at: list[int] = []
        if return_intermediates:  # index of the step time nearest to each requested time
            report_at = [int(torch.argmin((steps - r).abs())) for r in requested.tolist()]
        x_t = x_init.clone()
        snapshots = {0: x_t.clone()} if 0 in report_at else {}
        n = len(steps) - 1
        for i in range(n):
            t, h = steps[i : i + 1], steps[i + 1] - steps[i]
            x_1 = categorical(self.posterior(x_t, t, **extras), generator)
            if i == n - 1:
                x_t = x_1  # the last step lands on the posterior draw
            else:
                x_t = self._jump(x_t, x_1, t, h, div_free, generator)
            if i + 1 in report_at:
                snapshots[i + 1] = x_t.clone()
        if return_intermediates:
            return torch.stack([snapshots[k] for k in report_at])
        return x_t

    def _jump(
        self,
        x_t: Tensor,
        x_1: Tensor,
        t: Tensor,
        h: Tensor,
        div_free: float | Callable[[Tensor], Tensor | float],
        generator: torch.Generator | None,
    ) -> Tensor:
        """One Euler step of the conditional CTMC towards the drawn x_1."""
        s = self.path.scheduler(t)
        kappa, d_kappa = s.alpha_t, s.d_alpha_t
        one_hot_1 = F.one_hot(x_1, self.vocab_size).to(kappa.dtype)
        rates = (d_kappa / (1 - kappa)) * one_hot_1  # u_hat off the diagonal
        c = div_free(t) if callable(div_free) else div_free
        if isinstance(c, Tensor) or c != 0.0:
            p_0 = self.source_p.to(kappa.dtype).view(*([1] * x_t.ndim), -1)
            rates = rates + c * d_kappa / (kappa * (1 - kappa)) * (
                (1 - kappa) * p_0 + kappa * one_hot_1
            )
        rates = rates.masked_fill(F.one_hot(x_t, self.vocab_size).bool(), 0.0)
        total = rates.sum(-1)
        jump = torch.rand(x_t.shape, generator=generator, device=x_t.device) < -torch.expm1(
            -h * total
        )
        if jump.any():
            x_t = x_t.clone()
            x_t[jump] = categorical(rates[jump], generator)
        return x_t


def uniform_source(
    shape: Sequence[int], vocab_size: int, generator: torch.Generator | None = None
) -> Tensor:
    """Uniform source tokens (shape) in [0, vocab_size)."""
    return torch.randint(0, vocab_size, tuple(shape), generator=generator)
