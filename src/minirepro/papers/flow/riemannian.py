"""Riemannian flow matching: geodesic probability paths and an ODE solver that stays on the
manifold.

The geodesic conditional path runs from x_0 to x_1 along the geodesic at speed set by a
convex scheduler: x_t = exp_{x_0}(kappa_t log_{x_0}(x_1)), with velocity
d_kappa_t * gamma'(kappa_t) (guide, Sec. 5.4). Regressing it with a velocity model that
outputs tangent vectors gives a flow on the manifold; the solver projects each velocity onto
the tangent space (`proju`) and each point back onto the manifold (`projx`), so numerical
drift off the manifold never accumulates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from minirepro.papers.flow.manifolds import Manifold
from minirepro.papers.flow.paths import PathSample
from minirepro.papers.flow.schedulers import ConvexScheduler
from minirepro.papers.flow.solvers import make_time_grid

__all__ = ["GeodesicPath", "RiemannianODESolver", "TangentVelocity"]


class GeodesicPath:
    """x_t = exp_{x_0}(kappa_t log_{x_0}(x_1)) on a manifold.

    Args:
        scheduler: Gives kappa_t (alpha_t) and its derivative.
        manifold: The manifold.
    """

    def __init__(self, scheduler: ConvexScheduler, manifold: Manifold) -> None:
        self.scheduler = scheduler
        self.manifold = manifold

    def __repr__(self) -> str:
        return f"GeodesicPath({self.scheduler!r}, {self.manifold!r})"

    def sample(self, x_0: Tensor, x_1: Tensor, t: Tensor) -> PathSample:
        """Draws x_t and its conditional velocity.

        Args:
            x_0: Source points on the manifold (B, D).
            x_1: Target points on the manifold (B, D).
            t: Times (B,).

        Returns:
            The PathSample (t stays (B,)).
        """
        if x_0.shape != x_1.shape or t.shape != x_1.shape[:1]:
            raise ValueError(
                f"need x_0, x_1 of one shape (B, D) and t (B,); got {tuple(x_0.shape)}, "
                f"{tuple(x_1.shape)}, {tuple(t.shape)}"
            )
        s = self.scheduler(t)
        view = (-1,) + (1,) * (x_1.ndim - 1)
        point, speed = self.manifold.geodesic(x_0, x_1, s.alpha_t.view(view))
        return PathSample(x_0=x_0, x_1=x_1, t=t, x_t=point, dx_t=s.d_alpha_t.view(view) * speed)


class TangentVelocity(nn.Module):
    """Wraps a network R^D -> R^D so that its output is a tangent vector at x.

    Args:
        model: `model(x, t, **extras)` returning (B, D).
        manifold: Its `proju` projects the output onto the tangent space at x.
    """

    def __init__(self, model: nn.Module, manifold: Manifold) -> None:
        super().__init__()
        self.model = model
        self.manifold = manifold

    def forward(self, x: Tensor, t: Tensor, **extras: Any) -> Tensor:
        return self.manifold.proju(x, self.model(x, t, **extras))


class RiemannianODESolver:
    """Fixed-step ODE solver on a manifold (euler, midpoint, rk4 with projections).

    Args:
        manifold: The manifold.
        velocity: `velocity(x, t, **extras)` returns vectors at x (B, D); t is 0-dim.
    """

    def __init__(self, manifold: Manifold, velocity: Callable[..., Tensor]) -> None:
        self.manifold = manifold
        self.velocity = velocity

    def sample(
        self,
        x_init: Tensor,
        *,
        method: str = "euler",
        step_size: float | None = None,
        n_steps: int | None = None,
        time_grid: Tensor | Sequence[float] = (0.0, 1.0),
        projx: bool = True,
        proju: bool = True,
        return_intermediates: bool = False,
        enable_grad: bool = False,
        **extras: Any,
    ) -> Tensor:
        """Integrates from time_grid[0] to time_grid[-1] on the manifold.

        Args:
            x_init: Points on the manifold (B, D).
            method: "euler", "midpoint" or "rk4" (Kutta's 3/8 rule), each stage projected.
            step_size: Uniform steps (last shortened); or n_steps equal steps; with neither,
                step through time_grid.
            n_steps: Number of equal steps.
            time_grid: Times; intermediates are geodesically interpolated to them.
            projx: Project every stage's point onto the manifold.
            proju: Project every velocity onto the tangent space.
            return_intermediates: Return (len(time_grid), B, D).
            enable_grad: Keep the autograd graph.
            **extras: Passed to the velocity model.

        Returns:
            Points at time_grid[-1] (B, D), or the intermediates.
        """
        if method not in ("euler", "midpoint", "rk4"):
            raise ValueError(f"unknown method {method!r}; use euler, midpoint or rk4")
        m = self.manifold
        requested = torch.as_tensor(time_grid, dtype=x_init.dtype, device=x_init.device)
        steps = make_time_grid(
            requested, step_size, n_steps, dtype=x_init.dtype, device=x_init.device
        )
        direction = 1.0 if float(steps[-1]) >= float(steps[0]) else -1.0
        targets = requested.tolist()

        def vel(x: Tensor, t: Tensor) -> Tensor:
            u = self.velocity(x, t, **extras)
            return m.proju(x, u) if proju else u

        def on(x: Tensor) -> Tensor:
            return m.projx(x) if projx else x

        out, j = [x_init], 1
        with torch.set_grad_enabled(enable_grad):
            x = x_init
            for i in range(len(steps) - 1):
                t, h = steps[i], steps[i + 1] - steps[i]
                if method == "euler":
                    x_next = on(x + h * vel(x, t))
                elif method == "midpoint":
                    x_mid = on(x + 0.5 * h * vel(x, t))
                    x_next = on(x + h * vel(x_mid, t + 0.5 * h))
                else:  # rk4, 3/8 rule
                    k1 = vel(x, t)
                    k2 = vel(on(x + h * k1 / 3), t + h / 3)
                    k3 = vel(on(x + h * (k2 - k1 / 3)), t + 2 * h / 3)
                    k4 = vel(on(x + h * (k1 - k2 + k3)), t + h)
                    x_next = on(x + (h / 8) * (k1 + 3 * (k2 + k3) + k4))
                t0f, t1f = float(steps[i]), float(steps[i + 1])
                while j < len(targets) and direction * (t1f - targets[j]) >= 0:
                    w = 1.0 if t1f == t0f else (targets[j] - t0f) / (t1f - t0f)
                    if w == 1.0:
                        out.append(x_next)
                    else:  # along the geodesic between the two steps
                        point, _ = m.geodesic(x, x_next, torch.tensor(w, dtype=x.dtype))
                        out.append(point)
                    j += 1
                x = x_next
        return torch.stack(out) if return_intermediates else x
