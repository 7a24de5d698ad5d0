"""Small networks for the reproductions: a velocity MLP (continuous and Riemannian flows,
optionally class-conditional) and a posterior MLP over tokens (discrete flows).

Both take time as a scalar or a (B,) vector and embed it with sinusoidal features; the
velocity MLP can also embed x with fixed Fourier features, which lets a small MLP represent
the sharp edges of the checkerboard (Tancik et al. 2020).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from minirepro.papers.flow.utils import time_vector

__all__ = ["PosteriorMLP", "VelocityMLP", "sinusoidal_embedding"]


def sinusoidal_embedding(t: Tensor, n_features: int, max_period: float = 1e4) -> Tensor:
    """Sinusoidal features of times t (B,) -> (B, n_features), scaled so t in [0, 1] spans them."""
    half = n_features // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=t.dtype, device=t.device) / half
    )
    angles = (max_period / 10 * t)[:, None] * freqs[None]  # (B, half); highest: 1000 t
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class VelocityMLP(nn.Module):
    """u(x, t[, y]): an MLP on [x, Fourier(x), sin/cos(t)], optionally class-conditional.

    Args:
        dim: Data dimension D.
        width: Hidden width.
        depth: Number of hidden layers.
        n_classes: Number of classes for conditioning (0: unconditional). Label
            `n_classes` is the null label of classifier-free guidance.
        time_features: Sinusoidal time features.
        fourier_features: Fixed random Fourier features of x (0: none).
        fourier_scale: Standard deviation of their frequencies.
        seed: Draws the Fourier frequencies.
    """

    def __init__(
        self,
        dim: int,
        width: int = 256,
        depth: int = 4,
        *,
        n_classes: int = 0,
        time_features: int = 32,
        fourier_features: int = 0,
        fourier_scale: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.dim, self.n_classes, self.time_features = dim, n_classes, time_features
        g = torch.Generator().manual_seed(seed)
        self.register_buffer(
            "freqs", torch.randn(dim, fourier_features, generator=g) * fourier_scale
        )
        d_in = dim + 1 + 2 * fourier_features + time_features
        self.label_embedding = nn.Embedding(n_classes + 1, width) if n_classes else None
        self.inp = nn.Linear(d_in, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.out = nn.Linear(width, dim)
        self.act = nn.SiLU()

    @property
    def null_label(self) -> int:
        return self.n_classes

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Args: x (B, D); t scalar or (B,); y (B,) labels. Returns (B, D)."""
        t = time_vector(t, x)
        feats = [x, t[:, None], sinusoidal_embedding(t, self.time_features)]
        if self.freqs.shape[1]:
            proj = 2 * math.pi * x @ self.freqs  # (B, F)
            feats += [torch.sin(proj), torch.cos(proj)]
        h = self.inp(torch.cat(feats, dim=-1))
        if self.label_embedding is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.null_label, dtype=torch.long, device=x.device)
            h = h + self.label_embedding(y)
        h = self.act(h)
        for layer in self.hidden:
            h = self.act(layer(h))
        return self.out(h)


class PosteriorMLP(nn.Module):
    """Logits of p_{1|t}(. | x_t) for d tokens over a vocabulary of K.

    Args:
        n_tokens: d, the number of coordinates.
        vocab_size: K.
        width: Hidden width.
        depth: Number of hidden layers.
        embed_dim: Token embedding size.
        n_classes: Classes for conditioning (0: none); label n_classes is the null label.
        time_features: Sinusoidal time features.
    """

    def __init__(
        self,
        n_tokens: int,
        vocab_size: int,
        width: int = 256,
        depth: int = 4,
        *,
        embed_dim: int = 32,
        n_classes: int = 0,
        time_features: int = 32,
    ) -> None:
        super().__init__()
        self.n_tokens, self.vocab_size, self.n_classes = n_tokens, vocab_size, n_classes
        self.time_features = time_features
        self.token_embedding = nn.Embedding(vocab_size, embed_dim)
        self.label_embedding = nn.Embedding(n_classes + 1, width) if n_classes else None
        self.inp = nn.Linear(n_tokens * embed_dim + time_features, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.out = nn.Linear(width, n_tokens * vocab_size)
        self.act = nn.SiLU()

    @property
    def null_label(self) -> int:
        return self.n_classes

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Args: x (B, d) token ids; t scalar or (B,); y (B,). Returns logits (B, d, K)."""
        b = x.shape[0]
        t = time_vector(t, x, dtype=self.token_embedding.weight.dtype)
        emb = self.token_embedding(x).reshape(b, -1)  # (B, d * E)
        h = self.inp(torch.cat([emb, sinusoidal_embedding(t, self.time_features)], dim=-1))
        if self.label_embedding is not None:
            if y is None:
                y = torch.full((b,), self.null_label, dtype=torch.long, device=x.device)
            h = h + self.label_embedding(y)
        h = self.act(h)
        for layer in self.hidden:
            h = self.act(layer(h))
        return self.out(h).view(b, self.n_tokens, self.vocab_size)
