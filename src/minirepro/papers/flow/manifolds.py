"""Manifolds for Riemannian flow matching: exp/log maps, projections, geodesics.

Each manifold gives `geodesic(x, y, s)`: the point exp_x(s log_x(y)) and its derivative in s,
in closed form, which is what a geodesic probability path needs (no jvp through exp/log).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

__all__ = ["Euclidean", "FlatTorus", "Manifold", "Sphere"]


class Manifold(ABC):
    """A Riemannian manifold embedded in R^D; points and tangent vectors are (..., D)."""

    @abstractmethod
    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        """exp_x(u): follow the geodesic from x with initial velocity u for unit time."""

    @abstractmethod
    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        """log_x(y): the tangent vector at x whose geodesic reaches y at time 1."""

    @abstractmethod
    def projx(self, x: Tensor) -> Tensor:
        """The nearest point of the manifold."""

    @abstractmethod
    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """Projects u onto the tangent space at x."""

    def geodesic(self, x: Tensor, y: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """The geodesic from x to y at parameter s, and its derivative in s.

        Args:
            x: Start points (..., D).
            y: End points (..., D).
            s: Parameters broadcastable to (..., 1).

        Returns:
            (gamma(s), d gamma / ds), each (..., D).
        """
        v = self.logmap(x, y)
        return self.expmap(x, s * v), self._transport_velocity(x, v, s)

    def _transport_velocity(self, x: Tensor, v: Tensor, s: Tensor) -> Tensor:
        """d/ds exp_x(s v); this generic version takes a forward-mode derivative."""
        s = s.expand(v.shape[:-1] + (1,))
        _, ds = torch.func.jvp(lambda s_: self.expmap(x, s_ * v), (s,), (torch.ones_like(s),))
        return ds

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Euclidean(Manifold):
    """R^D: straight lines."""

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        return x + u

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        return y - x

    def projx(self, x: Tensor) -> Tensor:
        return x

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        return u

    def geodesic(self, x: Tensor, y: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        v = y - x
        return x + s * v, v.expand_as(x + s * v)


class Sphere(Manifold):
    """The unit sphere S^{D-1} in R^D."""

    # Below this tangent-vector norm, exp/log use first-order formulas (no 0/0).
    EPS = {torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float32: 1e-4, torch.float64: 1e-7}

    def _eps(self, x: Tensor) -> float:
        return self.EPS.get(x.dtype, 1e-4)

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        norm = u.norm(dim=-1, keepdim=True)
        small = norm <= self._eps(u)
        safe = torch.where(small, torch.ones_like(norm), norm)
        exact = x * torch.cos(norm) + u * (torch.sin(safe) / safe)
        return torch.where(small, self.projx(x + u), exact)

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        u = self.proju(x, y - x)
        theta = self.dist(x, y, keepdim=True)
        u_norm = u.norm(dim=-1, keepdim=True).clamp_min(self._eps(x))
        return torch.where(theta > self._eps(x), u * (theta / u_norm), u)

    def projx(self, x: Tensor) -> Tensor:
        return x / x.norm(dim=-1, keepdim=True)

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        return u - (x * u).sum(-1, keepdim=True) * x

    def dist(self, x: Tensor, y: Tensor, *, keepdim: bool = False) -> Tensor:
        """Great-circle distance."""
        return torch.acos((x * y).sum(-1, keepdim=keepdim).clamp(-1.0, 1.0))

    def _transport_velocity(self, x: Tensor, v: Tensor, s: Tensor) -> Tensor:
        # gamma(s) = x cos(s |v|) + v sin(s |v|) / |v|  =>  gamma' = -|v| x sin(s|v|) + v cos(s|v|)
        theta = v.norm(dim=-1, keepdim=True)
        small = theta <= self._eps(v)
        exact = -theta * x * torch.sin(s * theta) + v * torch.cos(s * theta)
        # Near theta = 0 the retraction projx(x + s v) is used; its derivative at small v is
        # the tangent projection of v at the current point.
        point = self.projx(x + s * v)
        return torch.where(small, self.proju(point, v), exact)


class FlatTorus(Manifold):
    """The flat torus [0, 2 pi)^D: a product of circles, straight lines modulo 2 pi."""

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        return torch.remainder(x + u, 2 * math.pi)

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        d = y - x
        return torch.atan2(torch.sin(d), torch.cos(d))  # the shortest signed angle

    def projx(self, x: Tensor) -> Tensor:
        return torch.remainder(x, 2 * math.pi)

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        return u

    def _transport_velocity(self, x: Tensor, v: Tensor, s: Tensor) -> Tensor:
        return v.expand(torch.broadcast_shapes(v.shape, s.shape))
