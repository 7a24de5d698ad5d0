"""Sliding-window attention for the core decoder layers, with a rolling KV cache.

The mask is FlexAttention's `make_sliding_window` (our `minirepro.papers.flexattn`, reached
through `ModelConfig(attention="flex", mask="sliding_window_<W>")`): query i sees keys
i - W .. i. Training runs the block-sparse kernel on the whole sequence; generation keeps
only the last W keys of each layer in a `RollingKVCache`, so memory and time per token stay
constant however long the mesh grows ("sliding-window attention at inference").

The cached keys are handed to the same attention function in *local* coordinates (key 0 is
the oldest one kept); the sliding-window mask depends only on q - kv, so shifting both
sides by the same offset leaves it unchanged, and a steady decoding step always asks for
the same (1 query, W + 1 keys, offset W) BlockMask, built once. A single new token needs
no mask at all (the cache holds exactly its window), so decoding runs SDPA on the cache;
chunks of several tokens go through the flex mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from minirepro.core.model import (
    Attention,
    KVCache,
    MixerInput,
    ModelConfig,
    apply_rope,
    register_mixer,
)

__all__ = ["MIXER", "RollingKVCache", "WindowAttention", "level_config"]

MIXER = "meshtron_window"


class RollingKVCache:
    """The last `window` keys/values of one layer (plus the ones being added).

    Keys sit in a buffer of about twice the window; when it fills, the kept tail moves to
    the front (amortised O(1) per token). `update` returns the keys the new queries may
    see, oldest first, and the local index of the first new query.
    """

    def __init__(
        self,
        batch_size: int,
        n_kv_head: int,
        window: int,
        head_dim: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        shape = (batch_size, n_kv_head, 2 * window + 2, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.lo = 0  # buffer index of the oldest key a new query may see
        self.hi = 0  # buffer index one past the newest key
        self.pos = 0  # absolute position of the next token

    def update(self, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, int]:
        """Append k, v (B, H_kv, S, D) for positions [start, start + S).

        Returns:
            keys, values (B, H_kv, T, D) the queries may see (oldest first) and the local
            index T - S of the first new query.
        """
        if start != self.pos:
            raise ValueError(
                f"a rolling cache continues its sequence: expected position {self.pos}, got {start}"
            )
        S = k.shape[2]
        lo = max(self.lo, self.hi - self.window)
        if self.hi + S > self.k.shape[2]:  # move the kept tail to the front
            n = self.hi - lo
            if n + S > self.k.shape[2]:  # a long chunk: grow
                grow = n + S - self.k.shape[2]
                pad = (0, 0, 0, grow)
                self.k = torch.nn.functional.pad(self.k, pad)
                self.v = torch.nn.functional.pad(self.v, pad)
            self.k[:, :, :n] = self.k[:, :, lo : self.hi].clone()
            self.v[:, :, :n] = self.v[:, :, lo : self.hi].clone()
            lo, self.hi = 0, n
        self.k[:, :, self.hi : self.hi + S] = k
        self.v[:, :, self.hi : self.hi + S] = v
        q_local = self.hi - lo
        self.hi += S
        self.lo = lo
        self.pos += S
        return self.k[:, :, lo : self.hi], self.v[:, :, lo : self.hi], q_local

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index`."""
        self.k, self.v = self.k[index], self.v[index]


class WindowAttention(Attention):
    """The core attention layer, with a `RollingKVCache` when the config names a window.

    `mixer_kwargs["window"]`: the number of earlier keys each query sees (None: all).
    """

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__(cfg, layer)
        self.window = cfg.mixer_kwargs.get("window")

    def new_cache(self, batch_size: int, max_len: int, device, dtype):
        if self.window is None:
            return KVCache(batch_size, self.n_kv_head, max_len, self.head_dim, device, dtype)
        return RollingKVCache(batch_size, self.n_kv_head, self.window, self.head_dim, device, dtype)

    def forward(self, x: Tensor, inp: MixerInput) -> Tensor:
        B, S, _ = x.shape
        if isinstance(inp.cache, RollingKVCache):
            return self._rolling(x, inp)
        if self.window is not None and inp.cache is None and S <= self.window + 1:
            # the window holds the whole sequence: the mask is the causal one, and SDPA's
            # fused causal kernel is the faster way to apply it (truncated training)
            return self._causal(x, inp)
        return super().forward(x, inp)

    def _qkv(self, x: Tensor, inp: MixerInput) -> tuple[Tensor, Tensor, Tensor]:
        B, S, _ = x.shape
        q = self.wq(x).view(B, S, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, S, D)
        k = self.wk(x).view(B, S, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, S, D)
        v = self.wv(x).view(B, S, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, inp.cos, inp.sin), apply_rope(k, inp.cos, inp.sin)
        return q, k, v

    def _out(self, y: Tensor) -> Tensor:
        B, _, S, _ = y.shape
        return self.wo(y.transpose(1, 2).reshape(B, S, self.n_head * self.head_dim))

    def _causal(self, x: Tensor, inp: MixerInput) -> Tensor:
        q, k, v = self._qkv(x, inp)
        gqa = self.n_head != self.n_kv_head
        return self._out(F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa))

    def _rolling(self, x: Tensor, inp: MixerInput) -> Tensor:
        q, k, v = self._qkv(x, inp)
        k, v, q_local = inp.cache.update(inp.start_pos, k, v)  # (B, Hkv, T, D), local frame
        if q.shape[2] == 1:
            # one new token: the cache holds exactly the keys its window allows, so no
            # mask is left to apply (tests check this equals the flex window mask)
            gqa = self.n_head != self.n_kv_head
            return self._out(F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa))
        return self._out(self.attn_fn(q, k, v, q_start=q_local))  # (B, H, S, D) inside


register_mixer(MIXER, WindowAttention)


def level_config(
    n_layer: int, d_model: int, n_head: int, window: int | None, vocab_size: int = 1
) -> ModelConfig:
    """The core `ModelConfig` of one level's layers.

    Args:
        n_layer: Layers at this level.
        d_model: Width.
        n_head: Attention heads.
        window: Sliding window in this level's positions (flexattn's mask), or None for
            full causal attention (SDPA).
        vocab_size: Unused by the layers; ModelConfig wants one.
    """
    if window is None:
        return ModelConfig(
            vocab_size=vocab_size, n_layer=max(n_layer, 1), n_head=n_head, d_model=d_model,
            mixer=MIXER, attention="sdpa", mask="causal",
        )  # fmt: skip
    if window < 1:
        raise ValueError(f"window must be >= 1 position at every level, got {window}")
    import minirepro.papers.flexattn  # noqa: F401  registers attention="flex"

    return ModelConfig(
        vocab_size=vocab_size, n_layer=max(n_layer, 1), n_head=n_head, d_model=d_model,
        mixer=MIXER, attention="flex", mask=f"sliding_window_{window}",
        mixer_kwargs={"window": window},
    )  # fmt: skip
