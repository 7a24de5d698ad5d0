"""The Hourglass Transformer over mesh tokens, and the flat transformer it is compared with.

Levels follow the mesh sequence: coordinates, then vertices (3 coordinates), then faces
(3 vertices). ``layers=(a, b, c, b', a')`` puts a layers at the token level, b at the vertex
level, c at the face level, then b' and a' on the way back up; ``layers=(n,)`` is a flat
transformer of n layers. Every layer is the core decoder's `Block` (RMSNorm, RoPE, SwiGLU).

Shortening by k (Nawrot et al.'s Hourglass): shift the sequence right by k - 1, then merge
each group of k with a linear map (k d -> d). The shortened token j then holds positions
jk - k + 1 .. jk, so its output, repeated and linearly mapped back (d -> k d) to positions
jk .. jk + k - 1, never carries a later token; a residual adds the pre-shortening stream.
With BOS at position 0, the groups are exactly the vertices (tokens 3v+1 .. 3v+3) and, one
level up, the faces: group j closes on the last coordinate of vertex j - 1, and its output
reaches the tokens that predict vertex j. Windows for truncated training therefore start
at a face boundary - 1 (a position that is a multiple of 9, see `data.face_windows`).

`HourglassLM.step` decodes one token at a time: token-level layers run every step, the
vertex level every 3rd, the face level every 9th, each with its own (rolling) KV cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minirepro.core.model import Block, MixerInput, RMSNorm, rope_cos_sin
from minirepro.papers.meshtron.conditioning import ConditionEncoder, CrossAttention
from minirepro.papers.meshtron.window import level_config

__all__ = ["DecodeState", "HourglassLM", "MeshtronConfig"]

SHORTEN = 3  # coordinates per vertex, vertices per face


@dataclass
class MeshtronConfig:
    """Shape of a mesh decoder.

    Attributes:
        vocab_size: Tokenizer vocabulary (n_levels + 3).
        layers: Layers per level, token level first and last, e.g. (1, 1, 4, 1, 1) for
            three levels (token, vertex, face) or (8,) for a flat transformer.
        d_model: Width (all levels).
        n_head: Attention heads.
        window: Sliding window in tokens at the token level (window // 3 vertices, // 9
            faces one and two levels up); None: full causal attention.
        point_cloud: Condition on a point cloud (Perceiver + cross-attention).
        face_bins: Face-count control bins (0: none).
        max_faces: The largest face count the face bins cover.
        n_latents: Perceiver latents.
        rope_theta: RoPE base.
    """

    vocab_size: int = 1027
    layers: tuple[int, ...] = (1, 1, 4, 1, 1)
    d_model: int = 128
    n_head: int = 4
    window: int | None = None
    point_cloud: bool = False
    face_bins: int = 0
    max_faces: int = 4096
    n_latents: int = 32
    rope_theta: float = 10000.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        self.layers = tuple(int(n) for n in self.layers)
        if len(self.layers) % 2 == 0 or len(self.layers) > 5:
            raise ValueError(
                f"layers must list 1, 3 or 5 levels (token[, vertex[, face]] and back up), "
                f"got {self.layers}"
            )
        if any(n < 0 for n in self.layers) or sum(self.layers) == 0:
            raise ValueError(f"layers must be >= 0 with at least one layer, got {self.layers}")
        if self.window is not None and self.window < SHORTEN ** (self.n_levels - 1):
            raise ValueError(
                f"window={self.window} leaves no position at the top level; "
                f"need >= {SHORTEN ** (self.n_levels - 1)}"
            )

    @property
    def n_levels(self) -> int:
        return len(self.layers) // 2 + 1

    def level_window(self, depth: int) -> int | None:
        return None if self.window is None else self.window // SHORTEN**depth


class MeshBlock(nn.Module):
    """A core decoder Block, then cross-attention to the condition when there is one."""

    def __init__(self, cfg, layer: int, d_model: int, n_head: int, cond: bool) -> None:
        super().__init__()
        self.block = Block(cfg, layer)
        self.cross = CrossAttention(d_model, n_head, mlp=False) if cond else None

    def forward(self, x: Tensor, inp: MixerInput, context: Tensor | None, kv=None) -> Tensor:
        x = self.block(x, inp)
        return x if self.cross is None else self.cross(x, context, kv)


@dataclass
class DecodeState:
    """Incremental decoding state: per level, layer caches, the last k pre-shortening
    outputs, the current upsampled vectors and the next position."""

    pre: list[list]
    post: list[list]
    buf: list[Tensor | None]
    up: list[Tensor | None]
    pos: list[int]
    context: Tensor | None = None
    extra: dict = field(default_factory=dict)

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index`."""
        for caches in self.pre + self.post:
            for c in caches:
                c.reorder(index)
        self.buf = [b[index] if b is not None else None for b in self.buf]
        self.up = [u[index] if u is not None else None for u in self.up]
        if self.context is not None:
            self.context = self.context[index]
        self.extra = {}  # context K/V, recomputed from the reordered context


class HourglassLM(nn.Module):
    """Mesh-token decoder: hourglass (3 levels), or flat with ``layers=(n,)``.

    Example:
        >>> model = HourglassLM(MeshtronConfig(vocab_size=131, layers=(1, 1, 2, 1, 1), d_model=64))
        >>> logits = model(torch.randint(0, 128, (2, 37)))  # (2, 37, 131)
    """

    def __init__(self, cfg: MeshtronConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n, d, h = cfg.n_levels, cfg.d_model, cfg.n_head
        cond = cfg.point_cloud or cfg.face_bins > 0
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.level_cfg = [level_config(1, d, h, cfg.level_window(i)) for i in range(n)]
        for c in self.level_cfg:
            c.rope_theta = cfg.rope_theta

        def blocks(depth: int, count: int) -> nn.ModuleList:
            return nn.ModuleList(
                MeshBlock(self.level_cfg[depth], i, d, h, cond) for i in range(count)
            )

        self.pre = nn.ModuleList(blocks(i, cfg.layers[i]) for i in range(n))
        self.post = nn.ModuleList(
            blocks(i, cfg.layers[len(cfg.layers) - 1 - i]) for i in range(n - 1)
        )
        self.down = nn.ModuleList(nn.Linear(SHORTEN * d, d, bias=False) for _ in range(n - 1))
        self.up = nn.ModuleList(nn.Linear(d, SHORTEN * d, bias=False) for _ in range(n - 1))
        self.condition = (
            ConditionEncoder(d, h, cfg.n_latents, point_cloud=cfg.point_cloud,
                             face_bins=cfg.face_bins, max_faces=cfg.max_faces)
            if cond else None
        )  # fmt: skip
        self.norm = RMSNorm(d)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        self._init()

    def _init(self) -> None:
        n_layer = sum(self.cfg.layers)
        for name, p in self.named_parameters():
            if p.ndim < 2 or name.endswith("latents"):
                continue
            residual_out = name.endswith(("wo.weight", "w_down.weight"))
            std = self.cfg.init_std / (math.sqrt(2 * n_layer) if residual_out else 1.0)
            nn.init.normal_(p, 0.0, std)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode_condition(
        self, points: Tensor | None = None, n_faces: Tensor | None = None
    ) -> Tensor | None:
        """The context rows (B, M, d) of a conditioned model, None for an unconditioned one."""
        if self.condition is None:
            if points is not None or n_faces is not None:
                raise ValueError("this model takes no condition (point_cloud=False, face_bins=0)")
            return None
        return self.condition(points, n_faces)

    # ------------------------------------------------------------------ whole sequences

    def _run(self, blocks, x: Tensor, depth: int, context, caches=None, start: int = 0, kvs=None):
        S = x.shape[1]
        pos = torch.arange(start, start + S, device=x.device)
        cos, sin = rope_cos_sin(pos, self.level_cfg[depth].head_dim, self.cfg.rope_theta, x.dtype)
        for i, blk in enumerate(blocks):
            cache = caches[i] if caches is not None else None
            kv = None
            if kvs is not None and blk.cross is not None:  # decoding: context K/V once
                if blk not in kvs:
                    kvs[blk] = blk.cross.context_kv(context)
                kv = kvs[blk]
            x = blk(x, MixerInput(cos, sin, start, cache), context, kv)
        return x

    def _level(self, x: Tensor, depth: int, context) -> Tensor:
        x = self._run(self.pre[depth], x, depth, context)
        if depth == self.cfg.n_levels - 1:
            return x
        B, L, d = x.shape
        n = -(-L // SHORTEN)
        # shift right by k - 1 (causality), pad the end to whole groups
        xs = F.pad(x, (0, 0, SHORTEN - 1, n * SHORTEN - L))[:, : n * SHORTEN]  # (B, n k, d)
        s = self.down[depth](xs.reshape(B, n, SHORTEN * d))  # (B, n, d)
        s = self._level(s, depth + 1, context)
        u = self.up[depth](s).reshape(B, n * SHORTEN, d)[:, :L]  # (B, L, d)
        return self._run(self.post[depth], x + u, depth, context)

    def forward(
        self, idx: Tensor, points: Tensor | None = None, n_faces: Tensor | None = None
    ) -> Tensor:
        """Logits (B, S, vocab_size) of token ids (B, S).

        Position 0 must be a group boundary: BOS, or the token just before a face (a
        multiple of 9 in the full sequence); see the module docstring.
        """
        if idx.ndim != 2:
            raise ValueError(f"idx must be (batch, seq) token ids, got shape {tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.cfg.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.cfg.vocab_size})")
        context = self.encode_condition(points, n_faces)
        x = self._level(self.embed(idx), 0, context)
        return self.head(self.norm(x))

    # ------------------------------------------------------------------ one token at a time

    def new_state(
        self,
        batch_size: int,
        max_len: int = 4096,
        points: Tensor | None = None,
        n_faces: Tensor | None = None,
    ) -> DecodeState:
        """An empty decoding state: rolling caches with a window, else caches of max_len."""
        p = self.embed.weight
        n = self.cfg.n_levels

        def caches(blocks, depth):
            size = -(-max_len // SHORTEN**depth) + 1
            return [b.block.mixer.new_cache(batch_size, size, p.device, p.dtype) for b in blocks]

        return DecodeState(
            pre=[caches(self.pre[i], i) for i in range(n)],
            post=[caches(self.post[i], i) for i in range(n - 1)],
            buf=[p.new_zeros(batch_size, SHORTEN, self.cfg.d_model) for _ in range(n - 1)],
            up=[None] * (n - 1),
            pos=[0] * n,
            context=self.encode_condition(points, n_faces),
        )

    def _level_step(self, x: Tensor, depth: int, st: DecodeState) -> Tensor:
        p = st.pos[depth]
        x = self._run(self.pre[depth], x, depth, st.context, st.pre[depth], p, st.extra)
        if depth < self.cfg.n_levels - 1:
            B, _, d = x.shape
            st.buf[depth] = torch.cat([st.buf[depth][:, 1:], x], dim=1)  # (B, k, d)
            if p % SHORTEN == 0:  # positions p-k+1 .. p close group p // k
                s = self.down[depth](st.buf[depth].reshape(B, 1, SHORTEN * d))
                s = self._level_step(s, depth + 1, st)
                st.up[depth] = self.up[depth](s).reshape(B, SHORTEN, d)
            x = x + st.up[depth][:, p % SHORTEN : p % SHORTEN + 1]
            x = self._run(self.post[depth], x, depth, st.context, st.post[depth], p, st.extra)
        st.pos[depth] = p + 1
        return x

    @torch.no_grad()
    def step(self, token: Tensor, state: DecodeState) -> Tensor:
        """Logits (B, vocab_size) after feeding one token (B,) per sequence."""
        x = self.embed(token.reshape(-1, 1))  # (B, 1, d)
        x = self._level_step(x, 0, state)
        return self.head(self.norm(x))[:, 0]
