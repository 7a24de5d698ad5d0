"""A small vision transformer: patch embedding, CLS token, learned positions, pre-norm
encoder blocks (torch's ``nn.TransformerEncoderLayer``). InternViT-300M/6B at toy size."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["ViT", "ViTConfig"]


@dataclass
class ViTConfig:
    """Shape of the ViT.

    Attributes:
        image_size: side of a square tile in pixels (448 in the paper, 64 here).
        patch_size: side of a patch (14 in the paper, 8 here: 8x8 = 64 tokens per tile).
        channels: input channels (1 for grey glyphs, 3 for RGB).
        d_model, n_layer, n_head: encoder width, depth and heads.
        pixel_mean, pixel_std: inputs in [0, 1] are standardised as (x - mean) / std, as the
            reference's transform does with ImageNet's statistics; without it a mostly dark
            canvas gives nearly identical tokens and nothing to learn from.
    """

    image_size: int = 64
    patch_size: int = 8
    channels: int = 1
    d_model: int = 48
    n_layer: int = 2
    n_head: int = 4
    pixel_mean: float = 0.5
    pixel_std: float = 0.5

    def __post_init__(self) -> None:
        if min(self.image_size, self.patch_size, self.channels, self.d_model) < 1:
            raise ValueError("image_size, patch_size, channels and d_model must be >= 1")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}"
            )
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size


class ViT(nn.Module):
    """Encodes tiles (N, C, S, S) into tokens (N, 1 + (S/P)², d_model), CLS first."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch = nn.Conv2d(cfg.channels, cfg.d_model, cfg.patch_size, cfg.patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.pos = nn.Parameter(torch.randn(1, 1 + cfg.grid**2, cfg.d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.n_head, 4 * cfg.d_model, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True,
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layer, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, tiles: Tensor) -> Tensor:
        """tiles: (N, C, S, S) floats -> (N, 1 + grid², d_model)."""
        c, s = self.cfg.channels, self.cfg.image_size
        if tiles.ndim != 4 or tuple(tiles.shape[1:]) != (c, s, s):
            raise ValueError(f"tiles must be (N, {c}, {s}, {s}), got {tuple(tiles.shape)}")
        x = (tiles - self.cfg.pixel_mean) / self.cfg.pixel_std
        x = self.patch(x).flatten(2).transpose(1, 2)  # (N, grid², d_model), row-major
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1) + self.pos
        return self.norm(self.encoder(x))
