"""Schedulers (alpha_t, sigma_t) of affine probability paths, and changing a model's scheduler.

An affine path is `x_t = alpha_t x_1 + sigma_t x_0` with `alpha_0 = 0, alpha_1 = 1,
sigma_0 = 1, sigma_1 = 0` (t = 1 is data). A scheduler returns both coefficients and their
time derivatives; `snr_inverse` maps the signal-to-noise ratio `alpha_t / sigma_t` back to t,
which is what re-scheduling a trained model needs (guide, Sec. 4.8).

Convex schedulers have `sigma_t = 1 - kappa_t` with `kappa_t = alpha_t`; they also define the
mixture paths of discrete flow matching, where kappa_t is the probability of having jumped to
x_1 by time t.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from minirepro.papers.flow.utils import batch_view

__all__ = [
    "CondOTScheduler",
    "ConvexScheduler",
    "CosineScheduler",
    "LinearVPScheduler",
    "PolynomialScheduler",
    "Scheduler",
    "SchedulerOutput",
    "VPScheduler",
    "RescheduledVelocity",
]


@dataclass(frozen=True)
class SchedulerOutput:
    """The scheduler at times t: all four have the shape of t."""

    alpha_t: Tensor
    sigma_t: Tensor
    d_alpha_t: Tensor
    d_sigma_t: Tensor


class Scheduler(ABC):
    """(alpha_t, sigma_t) and derivatives; `snr_inverse` inverts alpha_t / sigma_t."""

    @abstractmethod
    def __call__(self, t: Tensor) -> SchedulerOutput:
        """Evaluates the scheduler.

        Args:
            t: Times in [0, 1], any shape.

        Returns:
            alpha_t, sigma_t and their derivatives, each of t's shape.
        """

    @abstractmethod
    def snr_inverse(self, snr: Tensor) -> Tensor:
        """Returns t such that alpha_t / sigma_t = snr (any shape, snr >= 0)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ConvexScheduler(Scheduler):
    """A scheduler with sigma_t = 1 - kappa_t, alpha_t = kappa_t."""

    @abstractmethod
    def kappa(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (kappa_t, d kappa_t / dt)."""

    @abstractmethod
    def kappa_inverse(self, kappa: Tensor) -> Tensor:
        """Returns t such that kappa_t = kappa."""

    def __call__(self, t: Tensor) -> SchedulerOutput:
        k, dk = self.kappa(t)
        return SchedulerOutput(alpha_t=k, sigma_t=1 - k, d_alpha_t=dk, d_sigma_t=-dk)

    def snr_inverse(self, snr: Tensor) -> Tensor:
        # kappa / (1 - kappa) = snr
        return self.kappa_inverse(snr / (1 + snr))


class CondOTScheduler(ConvexScheduler):
    """Conditional optimal transport: alpha_t = t, sigma_t = 1 - t."""

    def kappa(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return t, torch.ones_like(t)

    def kappa_inverse(self, kappa: Tensor) -> Tensor:
        return kappa


class PolynomialScheduler(ConvexScheduler):
    """alpha_t = t^n, sigma_t = 1 - t^n (n > 0); n = 1 is CondOT."""

    def __init__(self, n: float) -> None:
        if not n > 0:
            raise ValueError(f"PolynomialScheduler needs n > 0, got {n}")
        self.n = float(n)

    def kappa(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return t**self.n, self.n * t ** (self.n - 1)

    def kappa_inverse(self, kappa: Tensor) -> Tensor:
        return kappa ** (1 / self.n)

    def __repr__(self) -> str:
        return f"PolynomialScheduler(n={self.n:g})"


class VPScheduler(Scheduler):
    """Variance preserving (Song et al. 2021's VP-SDE, time reversed so t = 1 is data).

    With T(t) = (1 - t) beta_min + (1 - t)^2 (beta_max - beta_min) / 2:
    alpha_t = exp(-T / 2), sigma_t = sqrt(1 - exp(-T)).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def __call__(self, t: Tensor) -> SchedulerOutput:
        b, db = self.beta_min, self.beta_max - self.beta_min
        s = 1 - t
        big_t = s * b + 0.5 * s**2 * db
        d_big_t = -(b + s * db)
        alpha = torch.exp(-0.5 * big_t)
        sigma = torch.sqrt(-torch.expm1(-big_t))  # sqrt(1 - e^-T), accurate near T = 0
        return SchedulerOutput(
            alpha_t=alpha,
            sigma_t=sigma,
            d_alpha_t=-0.5 * d_big_t * alpha,
            d_sigma_t=0.5 * d_big_t * alpha**2 / sigma,
        )

    def snr_inverse(self, snr: Tensor) -> Tensor:
        # snr^2 = e^-T / (1 - e^-T)  =>  T = log(1 + 1 / snr^2); then solve the quadratic in s.
        b, db = self.beta_min, self.beta_max - self.beta_min
        big_t = torch.log1p(snr**-2)
        s = 2 * big_t / (b + torch.sqrt(b**2 + 2 * db * big_t))  # the stable root form
        return 1 - s

    def __repr__(self) -> str:
        return f"VPScheduler(beta_min={self.beta_min:g}, beta_max={self.beta_max:g})"


class LinearVPScheduler(Scheduler):
    """alpha_t = t, sigma_t = sqrt(1 - t^2)."""

    def __call__(self, t: Tensor) -> SchedulerOutput:
        sigma = torch.sqrt(1 - t**2)
        return SchedulerOutput(
            alpha_t=t, sigma_t=sigma, d_alpha_t=torch.ones_like(t), d_sigma_t=-t / sigma
        )

    def snr_inverse(self, snr: Tensor) -> Tensor:
        return snr / torch.sqrt(1 + snr**2)


class CosineScheduler(Scheduler):
    """alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2)."""

    def __call__(self, t: Tensor) -> SchedulerOutput:
        half_pi = math.pi / 2
        sin, cos = torch.sin(half_pi * t), torch.cos(half_pi * t)
        return SchedulerOutput(
            alpha_t=sin, sigma_t=cos, d_alpha_t=half_pi * cos, d_sigma_t=-half_pi * sin
        )

    def snr_inverse(self, snr: Tensor) -> Tensor:
        return torch.atan(snr) * (2 / math.pi)


class RescheduledVelocity(nn.Module):
    """A velocity model trained with one scheduler, used with another without retraining.

    Two affine paths with the same source and coupling are related by a scale-time change
    (guide, Sec. 4.8.3): the new path at time r is `s_r` times the old one at time `t_r`, where
    `t_r` has the same signal-to-noise ratio, rho(t_r) = rho_new(r), and
    `s_r = sigma_new(r) / sigma(t_r)`. The new marginal velocity is then

        u_new(x, r) = (ds_r/dr / s_r) x + s_r (dt_r/dr) u(x / s_r, t_r).

    Args:
        velocity: The trained model, called as `velocity(x, t, **extras)`.
        scheduler: The scheduler it was trained with (must implement `snr_inverse`).
        new_scheduler: The scheduler to sample with.
    """

    def __init__(self, velocity: nn.Module, scheduler: Scheduler, new_scheduler: Scheduler):
        super().__init__()
        self.velocity = velocity
        self.scheduler = scheduler
        self.new_scheduler = new_scheduler

    def forward(self, x: Tensor, t: Tensor, **extras) -> Tensor:
        """Args: x (B, ...); t: the new time r, a scalar or (B,). Returns u_new (B, ...)."""
        # At r = 1 both sigmas vanish and s_r is 0/0; its limit is approached from just below
        # (a step of 1e-4 in float32, where 1 - t keeps ~3 digits; 1e-7 in float64).
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.clamp(max=1 - (1e-7 if t.dtype == torch.float64 else 1e-4))
        new = self.new_scheduler(t)
        t_old = self.scheduler.snr_inverse(new.alpha_t / new.sigma_t)
        old = self.scheduler(t_old)
        # d rho / dt for each scheduler, rho = alpha / sigma
        d_rho_new = (new.d_alpha_t * new.sigma_t - new.alpha_t * new.d_sigma_t) / new.sigma_t**2
        d_rho_old = (old.d_alpha_t * old.sigma_t - old.alpha_t * old.d_sigma_t) / old.sigma_t**2
        dt_dr = d_rho_new / d_rho_old
        s = new.sigma_t / old.sigma_t
        ds_dr = (new.d_sigma_t * old.sigma_t - new.sigma_t * old.d_sigma_t * dt_dr) / old.sigma_t**2
        s, ds_dr, dt_dr = (batch_view(v, x) for v in (s, ds_dr, dt_dr))
        u = self.velocity(x / s, t_old, **extras)
        return (ds_dr / s) * x + s * dt_dr * u
