"""The diffusion pieces: noise schedule, v-prediction, DDIM sampling, context noise
augmentation.

With `x_t = alpha_t x_0 + sigma_t eps` (alpha_t^2 + sigma_t^2 = 1) the model predicts
`v = alpha_t eps - sigma_t x_0` (Salimans & Ho's v-parameterisation, which GameNGen uses);
then `x_0 = alpha_t x_t - sigma_t v` and `eps = sigma_t x_t + alpha_t v`. DDIM (eta = 0)
steps between a few of the T training timesteps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["NoiseAugmentation", "NoiseSchedule", "ddim_sample", "ddim_timesteps"]


class NoiseSchedule:
    """A cosine schedule (Nichol & Dhariwal) over `T` discrete timesteps 0..T-1.

    Args:
        T: Number of training timesteps.
        s: The cosine offset.
    """

    def __init__(self, T: int = 1000, s: float = 0.008) -> None:
        if T < 2:
            raise ValueError(f"T must be >= 2, got {T}")
        self.T = T
        f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        ts = torch.arange(T + 1, dtype=torch.float64) / T
        abar = torch.tensor([f(u) for u in ts.tolist()], dtype=torch.float64) / f(0.0)
        betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)  # the usual clip near t = T
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)  # (T,), float64

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha_t and sigma_t for integer timesteps `t` (any shape), as float32."""
        abar = self.alphas_cumprod[t.long().cpu()].to(torch.float32)
        return abar.sqrt().to(t.device), (1 - abar).sqrt().to(t.device)

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t for x0 (B, ...) at timesteps t (B,)."""
        a, s = (_bcast(v, x0) for v in self.alpha_sigma(t))
        return a * x0 + s * noise

    def v_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The regression target v = alpha_t eps - sigma_t x0."""
        a, s = (_bcast(v, x0) for v in self.alpha_sigma(t))
        return a * noise - s * x0

    def x0_eps(
        self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) implied by a v-prediction."""
        a, s = (_bcast(u, x_t) for u in self.alpha_sigma(t))
        return a * x_t - s * v, s * x_t + a * v


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def ddim_timesteps(n_steps: int, T: int) -> list[int]:
    """The `n_steps` timesteps DDIM visits, from T-1 down (evenly spaced, "trailing")."""
    if not 1 <= n_steps <= T:
        raise ValueError(f"DDIM steps must be in [1, {T}], got {n_steps}")
    return [round(T - 1 - i * T / n_steps) for i in range(n_steps)]


@torch.no_grad()
def ddim_sample(
    predict_v: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_T: torch.Tensor,
    schedule: NoiseSchedule,
    n_steps: int,
) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from pure noise to a sample.

    Args:
        predict_v: `predict_v(x_t, t)` with x_t (B, ...) and t (B,) int64 returns v (B, ...).
        x_T: (B, ...) the starting Gaussian noise.
        schedule: The training schedule.
        n_steps: Denoising steps (the paper samples with 4).

    Returns:
        (B, ...) the x0 of the last step.
    """
    steps = ddim_timesteps(n_steps, schedule.T)
    x = x_T
    for i, t in enumerate(steps):
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        x0, eps = schedule.x0_eps(x, tt, predict_v(x, tt))
        if i + 1 == len(steps):
            return x0
        a, s = schedule.alpha_sigma(torch.tensor([steps[i + 1]], device=x.device))
        x = a * x0 + s * eps
    return x


@dataclass(frozen=True)
class NoiseAugmentation:
    """Gaussian noise on the context frames, its level discretised into embedded buckets.

    "We corrupt context frames by adding a varying amount of Gaussian noise to encoded
    frames ... the noise level sigma ~ U(0, 0.7) ... discretized into 10 buckets", with the
    bucket's learned embedding added to the timestep embedding (GameNGen, Sec. 3.2.1).

    Attributes:
        max_sigma: Upper end of the uniform noise level.
        n_buckets: Number of discrete levels (and embeddings).
    """

    max_sigma: float = 0.7
    n_buckets: int = 10

    def __post_init__(self) -> None:
        if not self.max_sigma > 0 or self.n_buckets < 1:
            raise ValueError(f"need max_sigma > 0 and n_buckets >= 1, got {self}")

    def bucket(self, sigma: torch.Tensor) -> torch.Tensor:
        """The bucket index (int64) of noise levels `sigma` in [0, max_sigma]."""
        b = torch.floor(sigma / self.max_sigma * self.n_buckets).long()
        return b.clamp(0, self.n_buckets - 1)

    def sample(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(batch,) noise levels sigma ~ U(0, max_sigma)."""
        return torch.rand(batch, generator=generator) * self.max_sigma

    def apply(
        self, context: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """Noisy context frames: context + sigma * noise.

        Args:
            context: (B, N, C, H, W) the past frames in [-1, 1] (never the target frame).
            sigma: (B,) noise levels.
            noise: (B, N, C, H, W) standard Gaussian noise.
        """
        return context + _bcast(sigma, context) * noise
