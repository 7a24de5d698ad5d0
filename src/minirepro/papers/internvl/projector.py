"""Pixel unshuffle of ViT tokens and the MLP projector into the LLM's embedding space.

``pixel_shuffle`` is InternVL's (``modeling_internvl_chat.py``), which despite its name is a
space-to-depth: each 2x2 block of neighbouring tokens becomes one token with 4x the
channels, so a tile's 32x32 = 1,024 tokens become 256 (here 8x8 = 64 become 16). "v2"
keeps the grid's orientation; "v1", the original release, leaves it transposed.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["MLPProjector", "pixel_shuffle", "tokens_to_grid"]


def pixel_shuffle(x: Tensor, scale_factor: float = 0.5, version: str = "v2") -> Tensor:
    """Merge each ``r x r`` block of tokens into one, r = 1 / scale_factor.

    ``out[b, i, j, (di * r + dj) * C + c] = x[b, r*i + di, r*j + dj, c]`` for "v2" (what
    InternVL 2.5 and transformers' ``InternVLModel.pixel_shuffle`` compute); "v1" returns the
    same tensor with the two grid axes swapped.

    Args:
        x: token grid (B, H, W, C) with H and W divisible by r.
        scale_factor: 1/r with r an integer >= 1 (0.5 in the paper).
        version: "v2" or "v1".
    Returns:
        (B, H/r, W/r, r*r*C) for "v2"; (B, W/r, H/r, r*r*C) for "v1".
    """
    if version not in ("v1", "v2"):
        raise ValueError(f"version must be 'v1' or 'v2', got {version!r}")
    if x.ndim != 4:
        raise ValueError(f"x must be a token grid (B, H, W, C), got shape {tuple(x.shape)}")
    r = round(1 / scale_factor) if scale_factor > 0 else 0
    if r < 1 or abs(r * scale_factor - 1) > 1e-9:
        raise ValueError(f"scale_factor must be 1/r for an integer r >= 1, got {scale_factor}")
    B, H, W, C = x.shape
    if H % r or W % r:
        raise ValueError(f"grid {H}x{W} is not divisible by r={r} (scale_factor={scale_factor})")
    x = x.reshape(B, H // r, r, W // r, r, C)  # (B, H/r, di, W/r, dj, C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, H // r, W // r, r * r * C)
    return x if version == "v2" else x.transpose(1, 2).contiguous()


def tokens_to_grid(tokens: Tensor) -> Tensor:
    """ViT patch tokens (B, N, C) with N a square -> (B, sqrt N, sqrt N, C), row-major."""
    B, N, C = tokens.shape
    side = int(round(N**0.5))
    if side * side != N:
        raise ValueError(f"{N} patch tokens do not form a square grid")
    return tokens.reshape(B, side, side, C)


class MLPProjector(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear (InternVL's ``mlp1``).

    Parameter names equal transformers' ``InternVLMultiModalProjector``, so its state dict
    loads here and back.

    Args:
        in_dim: channels of the (unshuffled) vision tokens, e.g. 4 x the ViT width.
        d_model: the LLM's embedding width.
    """

    def __init__(self, in_dim: int, d_model: int) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_dim)
        self.linear_1 = nn.Linear(in_dim, d_model)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in_dim) -> (..., d_model)."""
        if x.shape[-1] != self.layer_norm.normalized_shape[0]:
            raise ValueError(
                f"projector expects {self.layer_norm.normalized_shape[0]} channels, got {x.shape[-1]}"
            )
        return self.linear_2(self.act(self.linear_1(self.layer_norm(x))))
