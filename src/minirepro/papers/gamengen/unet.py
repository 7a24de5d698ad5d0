"""A small pixel-space U-Net conditioned as GameNGen conditions Stable Diffusion.

- Past frames are concatenated with the noisy target on channels (the paper concatenates
  the encoded context latents the same way).
- Each past action is one learned token (plus a position embedding); the tokens replace
  the text prompt as the keys/values of cross-attention at the low-resolution levels.
- The timestep embedding plus the noise-augmentation bucket's embedding modulates every
  residual block (scale and shift); with `action_film` a projection of the action tokens is
  added to it too (not in the paper; off by default: it did worse here, NOTES.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet", "UNetConfig"]


@dataclass
class UNetConfig:
    """Shape of the U-Net.

    Attributes:
        frame_size: Side of the square frames (divisible by 2 ** (len(channels) - 1)).
        context: N, the number of past frames (and actions).
        n_actions: Size of the action vocabulary.
        channels: Feature channels at each resolution, highest first.
        d_emb: Width of the timestep / bucket / action embeddings.
        n_buckets: Noise-augmentation buckets (embeddings).
        attn_max_res: Cross-attention to the action tokens at resolutions <= this.
        n_head: Attention heads.
        action_film: Also add a projection of the action tokens to the block modulation.
    """

    frame_size: int = 32
    context: int = 4
    n_actions: int = 4
    channels: tuple[int, ...] = (32, 64, 96)
    d_emb: int = 128
    n_buckets: int = 10
    attn_max_res: int = 16
    n_head: int = 4
    action_film: bool = False

    def __post_init__(self) -> None:
        down = 2 ** (len(self.channels) - 1)
        if self.frame_size % down:
            raise ValueError(f"frame_size {self.frame_size} is not divisible by {down}")
        if self.context < 1 or self.n_actions < 1 or self.n_buckets < 1:
            raise ValueError("context, n_actions and n_buckets must be >= 1")
        if any(c % 8 for c in self.channels) or self.d_emb % self.n_head:
            raise ValueError("channels must be multiples of 8 and d_emb of n_head")


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps t (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, d_emb: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(d_emb, 2 * c_out)
        self.norm2 = nn.GroupNorm(8, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class CrossAttention(nn.Module):
    """Image positions attend to the action tokens (the paper's replacement of text)."""

    def __init__(self, channels: int, d_emb: int, n_head: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(8, channels)
        self.attn = nn.MultiheadAttention(
            channels, n_head if channels % n_head == 0 else 1, kdim=d_emb, vdim=d_emb,
            batch_first=True,
        )  # fmt: skip
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        y, _ = self.attn(q, tokens, tokens, need_weights=False)
        return x + self.out(y).transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    """Predicts v for the next frame from its noisy version, past frames and actions."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, ch = cfg.d_emb, cfg.channels
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.bucket_emb = nn.Embedding(cfg.n_buckets, d)
        nn.init.zeros_(self.bucket_emb.weight)  # bucket 0 starts as "no embedding"
        self.action_emb = nn.Embedding(cfg.n_actions, d)
        self.action_pos = nn.Parameter(torch.randn(cfg.context, d) * 0.02)
        self.action_film = nn.Linear(cfg.context * d, d) if cfg.action_film else None
        self.stem = nn.Conv2d(3 * (cfg.context + 1), ch[0], 3, padding=1)
        res = cfg.frame_size
        self.down = nn.ModuleList()
        self.down_attn = nn.ModuleList()
        self.pool = nn.ModuleList()
        for i, c in enumerate(ch):
            self.down.append(ResBlock(ch[max(i - 1, 0)], c, d))
            self.down_attn.append(self._attn(c, res))
            if i + 1 < len(ch):
                self.pool.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                res //= 2
        self.mid = ResBlock(ch[-1], ch[-1], d)
        self.mid_attn = CrossAttention(ch[-1], d, cfg.n_head)
        self.up = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        for i in reversed(range(len(ch))):
            c_in = ch[-1] if i == len(ch) - 1 else ch[i + 1]
            self.up.append(ResBlock(c_in + ch[i], ch[i], d))
            self.up_attn.append(self._attn(ch[i], res))
            res *= 2 if i > 0 else 1
        self.head = nn.Sequential(
            nn.GroupNorm(8, ch[0]), nn.SiLU(), nn.Conv2d(ch[0], 3, 3, padding=1)
        )

    def _attn(self, channels: int, res: int) -> nn.Module:
        if res > self.cfg.attn_max_res:
            return nn.Identity()
        return CrossAttention(channels, self.cfg.d_emb, self.cfg.n_head)

    def forward(
        self,
        x_t: torch.Tensor,
        context: torch.Tensor,
        t: torch.Tensor,
        bucket: torch.Tensor,
        actions: torch.Tensor,
    ) -> torch.Tensor:
        """Predicts v.

        Args:
            x_t: (B, 3, H, W) the noisy next frame.
            context: (B, N, 3, H, W) past frames in [-1, 1] (noise-augmented in training).
            t: (B,) int64 diffusion timesteps.
            bucket: (B,) int64 noise-augmentation buckets of the context.
            actions: (B, N) int64, the action on each past frame (the last is the current one).

        Returns:
            (B, 3, H, W) the v-prediction.
        """
        b, n = actions.shape
        if context.shape[:2] != (b, n) or n != self.cfg.context:
            raise ValueError(
                f"expected context (B, {self.cfg.context}, 3, H, W) and actions (B, "
                f"{self.cfg.context}); got {tuple(context.shape)} and {tuple(actions.shape)}"
            )
        emb = self.time_mlp(timestep_embedding(t, self.cfg.d_emb)) + self.bucket_emb(bucket)
        tokens = self.action_emb(actions) + self.action_pos  # (B, N, d)
        if self.action_film is not None:
            emb = emb + self.action_film(tokens.flatten(1))  # (B, N*d) -> (B, d)
        h = self.stem(torch.cat([x_t, context.flatten(1, 2)], dim=1))  # (B, 3(N+1), H, W) in
        skips = []
        for i, (block, attn) in enumerate(zip(self.down, self.down_attn)):
            h = _attend(attn, block(h, emb), tokens)
            skips.append(h)
            if i < len(self.pool):
                h = self.pool[i](h)
        h = self.mid_attn(self.mid(h, emb), tokens)
        for block, attn in zip(self.up, self.up_attn):
            skip = skips.pop()
            if h.shape[-1] != skip.shape[-1]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = _attend(attn, block(torch.cat([h, skip], dim=1), emb), tokens)
        return self.head(h)


def _attend(attn: nn.Module, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return h if isinstance(attn, nn.Identity) else attn(h, tokens)
