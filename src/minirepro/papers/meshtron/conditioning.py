"""Conditioning: a Perceiver encoder of the point cloud, and the face-count token.

Meshtron conditions on a point cloud sampled from the target shape, encoded by a Perceiver
(learned latents cross-attend to the points, then attend among themselves) and read by
the decoder through cross-attention; a face-count embedding lets a user ask for a coarser
or finer mesh. Here both become rows of one context (B, M, d_model) that every decoder
layer cross-attends to.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minirepro.core.model import RMSNorm, SwiGLU

__all__ = [
    "ConditionEncoder",
    "CrossAttention",
    "face_count_bin",
    "fourier_features",
    "sample_points",
]


def fourier_features(points: Tensor, n_freq: int) -> Tensor:
    """(B, N, 3) -> (B, N, 3 + 6 n_freq): xyz and sin/cos of 2^i pi xyz."""
    freqs = (2.0 ** torch.arange(n_freq, device=points.device, dtype=points.dtype)) * math.pi
    angles = points[..., None] * freqs  # (B, N, 3, n_freq)
    return torch.cat([points, angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)


class CrossAttention(nn.Module):
    """Pre-norm multi-head attention of x over a context, plus a SwiGLU MLP, both residual.

    With ``context=None`` it attends over x itself (bidirectional self-attention).
    """

    def __init__(self, d_model: int, n_head: int, mlp: bool = True) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
        self.n_head = n_head
        self.norm_q = RMSNorm(d_model)
        self.norm_kv = RMSNorm(d_model)
        self.wq = nn.Linear(d_model, d_model, bias=False)
        self.wkv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.wo = nn.Linear(d_model, d_model, bias=False)
        self.norm_mlp = RMSNorm(d_model) if mlp else None
        self.mlp = SwiGLU(d_model, 32 * math.ceil(8 * d_model / 3 / 32)) if mlp else None

    def context_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values (B, H, M, D) of a context, to reuse over decoding steps."""
        c = self.norm_kv(context)
        B, M, _ = c.shape
        k, v = self.wkv(c).view(B, M, 2, self.n_head, -1).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        kv: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """x: (B, S, d); context: (B, M, d), or None for self-attention; kv: precomputed
        `context_kv(context)`. Returns (B, S, d)."""
        B, S, d = x.shape
        h = self.norm_q(x)
        q = self.wq(h).view(B, S, self.n_head, -1).transpose(1, 2)  # (B, H, S, D)
        if kv is None:
            c = h if context is None else self.norm_kv(context)
            kv = self.wkv(c).view(B, c.shape[1], 2, self.n_head, -1).permute(2, 0, 3, 1, 4)
        k, v = kv  # (B, H, M, D) each
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, S, D)
        x = x + self.wo(y.transpose(1, 2).reshape(B, S, d))
        if self.mlp is not None:
            x = x + self.mlp(self.norm_mlp(x))
        return x


def face_count_bin(n_faces: Tensor | int, n_bins: int, max_faces: int) -> Tensor:
    """Log-spaced bin of a face count: 0 .. n_bins - 1 over [1, max_faces]."""
    n = torch.as_tensor(n_faces, dtype=torch.float32).clamp(1, max_faces)
    b = torch.floor(torch.log(n) / math.log(max_faces) * n_bins).long()
    return b.clamp(0, n_bins - 1)


class ConditionEncoder(nn.Module):
    """Point cloud (Perceiver) and/or face count -> context rows (B, M, d_model).

    Args:
        d_model: Width.
        n_head: Heads of the Perceiver's attention.
        n_latents: Learned latents (the context length from the points).
        n_layer: Latent self-attention layers after the cross-attention.
        n_freq: Fourier frequencies of the point coordinates.
        point_cloud: Encode points.
        face_bins: Face-count bins (0: no face-count control).
        max_faces: The largest face count the bins cover.
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        n_latents: int = 32,
        n_layer: int = 1,
        n_freq: int = 6,
        point_cloud: bool = True,
        face_bins: int = 0,
        max_faces: int = 4096,
    ) -> None:
        super().__init__()
        if not point_cloud and face_bins <= 0:
            raise ValueError("a ConditionEncoder needs point_cloud=True or face_bins > 0")
        self.point_cloud, self.face_bins, self.max_faces = point_cloud, face_bins, max_faces
        self.n_freq = n_freq
        if point_cloud:
            self.point_in = nn.Linear(3 + 6 * n_freq, d_model)
            self.latents = nn.Parameter(torch.randn(n_latents, d_model) * 0.02)
            self.read = CrossAttention(d_model, n_head)
            self.layers = nn.ModuleList(CrossAttention(d_model, n_head) for _ in range(n_layer))
        if face_bins:
            self.face_embed = nn.Embedding(face_bins, d_model)

    def forward(self, points: Tensor | None = None, n_faces: Tensor | None = None) -> Tensor:
        """Context rows.

        Args:
            points: (B, N, 3) surface points in [-0.5, 0.5] (needed with point_cloud).
            n_faces: (B,) target face counts (needed with face_bins > 0).

        Returns:
            (B, n_latents + [1 if face_bins], d_model).
        """
        rows = []
        if self.point_cloud:
            if points is None or points.ndim != 3 or points.shape[-1] != 3:
                shape = None if points is None else tuple(points.shape)
                raise ValueError(f"points must be (B, N, 3), got {shape}")
            B = points.shape[0]
            p = self.point_in(fourier_features(points, self.n_freq))  # (B, N, d)
            lat = self.read(self.latents.expand(B, -1, -1), p)  # (B, M, d)
            for layer in self.layers:
                lat = layer(lat)
            rows.append(lat)
        if self.face_bins:
            if n_faces is None:
                raise ValueError("this model controls the face count: pass n_faces (B,)")
            b = face_count_bin(n_faces, self.face_bins, self.max_faces).to(
                self.face_embed.weight.device
            )
            rows.append(self.face_embed(b.reshape(-1))[:, None])  # (B, 1, d)
        return torch.cat(rows, dim=1)


def sample_points(mesh, n_points: int, seed: int) -> np.ndarray:
    """(n_points, 3) float32 points on the surface of a trimesh, area-weighted, seeded."""
    import trimesh

    pts, _ = trimesh.sample.sample_surface(mesh, n_points, seed=seed)
    return np.asarray(pts, dtype=np.float32)
