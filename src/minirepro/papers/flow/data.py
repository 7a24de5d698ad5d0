"""Data of the reproductions: the 2D checkerboard (continuous and as grid tokens), a
von Mises-Fisher mixture on the sphere, and scikit-learn's real 8x8 handwritten digits.

Every sampler draws from an explicit `torch.Generator`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "CHECKER_SCALE",
    "Digits",
    "checkerboard",
    "checkerboard_tokens",
    "load_digits",
    "sphere_uniform",
    "tokens_to_points",
    "vmf_mixture",
    "vmf_mixture_centers",
]

# The checkerboard of the guide's 2D example: 4 x 4 unit squares on [-2, 2)^2, the 8 squares
# with an even sum of integer parts filled, scaled by 1 / 0.45 to about [-4.4, 4.4)^2.
CHECKER_SCALE = 1 / 0.45
_SQUARES = torch.tensor([(i, j) for i in range(-2, 2) for j in range(-2, 2) if (i + j) % 2 == 0])


def checkerboard(n: int, generator: torch.Generator | None = None) -> Tensor:
    """n points uniform on the filled squares (n, 2)."""
    square = _SQUARES[torch.randint(len(_SQUARES), (n,), generator=generator)]
    return (square + torch.rand(n, 2, generator=generator)) * CHECKER_SCALE


def checkerboard_tokens(
    n: int, bins: int = 128, generator: torch.Generator | None = None
) -> Tensor:
    """The checkerboard on a grid: each coordinate of [-2, 2) cut into `bins` tokens (n, 2)."""
    u = checkerboard(n, generator) / CHECKER_SCALE
    return ((u + 2) * (bins / 4)).floor().long().clamp(0, bins - 1)


def tokens_to_points(tokens: Tensor, bins: int = 128) -> Tensor:
    """Grid tokens (n, 2) -> the centres of their cells, in checkerboard coordinates (n, 2)."""
    return ((tokens.float() + 0.5) * (4 / bins) - 2) * CHECKER_SCALE


def sphere_uniform(n: int, dim: int = 3, generator: torch.Generator | None = None) -> Tensor:
    """n points uniform on the unit sphere in R^dim."""
    x = torch.randn(n, dim, generator=generator)
    return x / x.norm(dim=-1, keepdim=True)


def vmf_mixture_centers(k: int = 5) -> Tensor:
    """k mean directions spread over S^2 (a Fibonacci lattice) (k, 3)."""
    i = torch.arange(k, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / k
    phi = math.pi * (1 + 5**0.5) * i
    r = (1 - z**2).sqrt()
    return torch.stack([r * phi.cos(), r * phi.sin(), z], dim=-1).float()


def vmf_mixture(
    n: int, centers: Tensor, kappa: float, generator: torch.Generator | None = None
) -> Tensor:
    """n draws from an equal mixture of von Mises-Fisher distributions on S^2 (n, 3).

    Uses the closed-form inverse CDF of the vMF's cosine on S^2 (Wood 1994, p = 3):
    w = 1 + log(u + (1 - u) exp(-2 kappa)) / kappa.
    """
    mu = centers[torch.randint(len(centers), (n,), generator=generator)]  # (n, 3)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    w = (1 + torch.log(u + (1 - u) * math.exp(-2 * kappa)) / kappa).float().clamp(-1, 1)
    v = torch.randn(n, 3, generator=generator)
    v = v - (v * mu).sum(-1, keepdim=True) * mu  # a random direction orthogonal to mu
    v = v / v.norm(dim=-1, keepdim=True)
    x = w[:, None] * mu + (1 - w**2).clamp_min(0).sqrt()[:, None] * v
    return x / x.norm(dim=-1, keepdim=True)


@dataclass(frozen=True)
class Digits:
    """scikit-learn's 8x8 digits scaled to [-1, 1], split into train and test.

    Attributes:
        x_train: (N, 64) float32 pixels in [-1, 1].
        y_train: (N,) labels 0-9.
        x_test: (M, 64).
        y_test: (M,).
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Digits:
    """Loads the 1797 real digits shipped with scikit-learn (no download); a stratified split."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    data = sk_load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 8 - 1  # pixel values 0..16 -> [-1, 1]
    y = torch.tensor(data.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        range(len(y)), test_size=test_fraction, random_state=seed, stratify=y.numpy()
    )
    return Digits(x[idx_train], y[idx_train], x[idx_test], y[idx_test])
