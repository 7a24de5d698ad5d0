"""Affine probability paths x_t = alpha_t x_1 + sigma_t x_0, and conversions between the
three things a model may predict: the velocity, x_1 (the data) or epsilon = x_0 (the noise).

Along a conditional path the velocity is `dx_t = d_alpha_t x_1 + d_sigma_t x_0`; since x_t
fixes one of (x_1, x_0) given the other, each prediction determines the others linearly
(guide, Sec. 4.8.1). For example, from x_1:

    x_0 = (x_t - alpha_t x_1) / sigma_t,
    velocity = (d_sigma_t / sigma_t) x_t + (d_alpha_t - d_sigma_t alpha_t / sigma_t) x_1.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from minirepro.papers.flow.schedulers import CondOTScheduler, Scheduler, SchedulerOutput
from minirepro.papers.flow.utils import batch_view

__all__ = ["AffinePath", "CondOTPath", "PathSample"]


@dataclass(frozen=True)
class PathSample:
    """A draw from a conditional path.

    Attributes:
        x_0: Source points (B, ...).
        x_1: Target points (B, ...).
        t: Times (B,).
        x_t: Points on the path at t (B, ...).
        dx_t: The conditional velocity d x_t / dt (B, ...), the regression target.
    """

    x_0: Tensor
    x_1: Tensor
    t: Tensor
    x_t: Tensor
    dx_t: Tensor


class AffinePath:
    """The affine path of a scheduler, with velocity / x_1 / epsilon conversions.

    Conversions take `t` as a scalar, a (B,) vector, or anything broadcastable to x_t.

    Args:
        scheduler: Gives alpha_t, sigma_t and their derivatives.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.scheduler!r})"

    def _coefficients(self, t: Tensor, x: Tensor) -> SchedulerOutput:
        s = self.scheduler(t)
        return SchedulerOutput(
            *(batch_view(v, x) for v in (s.alpha_t, s.sigma_t, s.d_alpha_t, s.d_sigma_t))
        )

    def sample(self, x_0: Tensor, x_1: Tensor, t: Tensor) -> PathSample:
        """Draws x_t and its conditional velocity.

        Args:
            x_0: Source samples (B, ...).
            x_1: Target samples (B, ...).
            t: Times (B,).

        Returns:
            The PathSample.
        """
        if x_0.shape != x_1.shape or t.shape != x_1.shape[:1]:
            raise ValueError(
                f"need x_0, x_1 of one shape (B, ...) and t (B,); got {tuple(x_0.shape)}, "
                f"{tuple(x_1.shape)}, {tuple(t.shape)}"
            )
        s = self._coefficients(t, x_1)
        x_t = s.alpha_t * x_1 + s.sigma_t * x_0
        dx_t = s.d_alpha_t * x_1 + s.d_sigma_t * x_0
        return PathSample(x_0=x_0, x_1=x_1, t=t, x_t=x_t, dx_t=dx_t)

    # The six conversions; each is linear in (x_t, prediction).
    def target_to_velocity(self, x_1: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """x_1-prediction -> velocity."""
        s = self._coefficients(t, x_t)
        a = s.d_sigma_t / s.sigma_t
        return a * x_t + (s.d_alpha_t - a * s.alpha_t) * x_1

    def epsilon_to_velocity(self, epsilon: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """epsilon-prediction -> velocity."""
        s = self._coefficients(t, x_t)
        a = s.d_alpha_t / s.alpha_t
        return a * x_t + (s.d_sigma_t - a * s.sigma_t) * epsilon

    def velocity_to_target(self, velocity: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """velocity -> x_1-prediction."""
        s = self._coefficients(t, x_t)
        det = s.d_alpha_t * s.sigma_t - s.d_sigma_t * s.alpha_t
        return (s.sigma_t * velocity - s.d_sigma_t * x_t) / det

    def velocity_to_epsilon(self, velocity: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """velocity -> epsilon-prediction."""
        s = self._coefficients(t, x_t)
        det = s.d_sigma_t * s.alpha_t - s.d_alpha_t * s.sigma_t
        return (s.alpha_t * velocity - s.d_alpha_t * x_t) / det

    def epsilon_to_target(self, epsilon: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """epsilon-prediction -> x_1-prediction."""
        s = self._coefficients(t, x_t)
        return (x_t - s.sigma_t * epsilon) / s.alpha_t

    def target_to_epsilon(self, x_1: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """x_1-prediction -> epsilon-prediction."""
        s = self._coefficients(t, x_t)
        return (x_t - s.alpha_t * x_1) / s.sigma_t


class CondOTPath(AffinePath):
    """The conditional-OT path x_t = t x_1 + (1 - t) x_0, velocity x_1 - x_0."""

    def __init__(self) -> None:
        super().__init__(CondOTScheduler())

    def sample(self, x_0: Tensor, x_1: Tensor, t: Tensor) -> PathSample:
        if x_0.shape != x_1.shape or t.shape != x_1.shape[:1]:
            return super().sample(x_0, x_1, t)  # raises the shape error
        dx_t = x_1 - x_0
        x_t = x_0 + batch_view(t, x_1) * dx_t  # one fused multiply-add, no scheduler calls
        return PathSample(x_0=x_0, x_1=x_1, t=t, x_t=x_t, dx_t=dx_t)
