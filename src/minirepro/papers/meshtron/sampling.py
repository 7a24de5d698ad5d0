"""Generation: token-by-token sampling with (rolling) caches and Meshtron's robust sampling.

Robust sampling masks the logits so the sequence can only be a canonical mesh
(`tokenizer.sequence_errors`): within a face each vertex is strictly above the previous one
in (z, y, x) order, each face is strictly above the previous face, EOS comes only at a
face boundary after at least one face, BOS/PAD never, and the last coordinate of a face
never makes it zero-area. Each rule is a lexicographic
lower bound that binds only while the prefix still ties the bound, so it is a few
comparisons per step on (B, vocab) masks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from minirepro.papers.meshtron.hourglass import HourglassLM
from minirepro.papers.meshtron.tokenizer import MeshTokenizer

__all__ = ["Generation", "generate", "order_mask"]


def _bound(allowed: Tensor, tied: Tensor, bound: Tensor, strict: bool) -> Tensor:
    """Where `tied`, keep only tokens >= bound (> bound if strict). allowed: (B, V)."""
    t = torch.arange(allowed.shape[1], device=allowed.device)[None]  # (1, V)
    ok = t > bound[:, None] if strict else t >= bound[:, None]
    return allowed & (ok | ~tied[:, None])


def order_mask(seq: Tensor, tok: MeshTokenizer, max_faces: int | None = None) -> Tensor:
    """Tokens that keep each sequence a valid, order-respecting mesh.

    Args:
        seq: (B, P) tokens so far, BOS first; every row at the same length.
        tok: The tokenizer (n_levels, special ids).
        max_faces: After this many faces only EOS is allowed.

    Returns:
        (B, vocab_size) bools, True where the next token is allowed.
    """
    B, P = seq.shape
    if P < 1:
        raise ValueError("seq must hold at least BOS")
    q, f = (P - 1) % 9, (P - 1) // 9  # position in the face, faces completed
    allowed = torch.zeros(B, tok.vocab_size, dtype=torch.bool, device=seq.device)
    if q == 0 and f >= 1:
        allowed[:, tok.eos] = True
        if max_faces is not None and f >= max_faces:
            return allowed
    allowed[:, : tok.n_levels] = True
    cur = seq[:, P - q :]  # (B, q) the face so far
    if f >= 1:  # face > previous face, lexicographically over 9 tokens
        prev = seq[:, P - q - 9 : P - q]  # (B, 9)
        tied = (cur == prev[:, :q]).all(1)
        allowed[:, : tok.n_levels] = _bound(allowed[:, : tok.n_levels], tied, prev[:, q], q == 8)
    if q >= 3:  # vertex > previous vertex of the face, over 3 tokens
        r = q % 3
        tied = (cur[:, q - r : q] == cur[:, q - r - 3 : q - 3]).all(1)
        allowed[:, : tok.n_levels] = _bound(allowed[:, : tok.n_levels], tied, cur[:, q - 3], r == 2)
    if q == 8:  # the last coordinate must not make the face zero-area (collinear)
        allowed[:, : tok.n_levels] &= ~_collinear_x(cur, tok.n_levels)
    return allowed


def _collinear_x(cur: Tensor, n_levels: int) -> Tensor:
    """(B, n_levels): True where x would put v2 = (z2, y2, x) on the line through v0, v1.

    cur: (B, 8) the face so far (z y x of v0, v1; z y of v2).
    """
    v0, v1 = cur[:, 0:3], cur[:, 3:6]  # (B, 3) as (z, y, x)
    x = torch.arange(n_levels, device=cur.device)
    v2 = torch.stack(torch.broadcast_tensors(cur[:, 6:7], cur[:, 7:8], x[None]), -1)  # (B, n, 3)
    cross = torch.linalg.cross((v1 - v0)[:, None].expand_as(v2), v2 - v0[:, None], dim=-1)
    return (cross == 0).all(-1)


@dataclass
class Generation:
    """What `generate` returns.

    Attributes:
        tokens: One int64 array per sequence, BOS first, EOS last when it ended.
        dead_ends: Rows whose order mask left no token (ended early; counted invalid).
        seconds: Wall time of the decoding loop.
        n_tokens: Tokens decoded (all rows, up to each one's EOS).
    """

    tokens: list[np.ndarray]
    dead_ends: int
    seconds: float
    n_tokens: int

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.seconds if self.seconds else float("nan")


@torch.no_grad()
def generate(
    model: HourglassLM,
    tok: MeshTokenizer,
    batch_size: int,
    max_faces: int,
    *,
    points: Tensor | None = None,
    n_faces: Tensor | None = None,
    robust: bool = True,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    stop_at_eos: bool = True,
) -> Generation:
    """Sample meshes token by token with the model's (rolling) KV caches.

    Args:
        model: The decoder; with `window` set its caches roll (constant memory per step).
        tok: The tokenizer.
        batch_size: Sequences, decoded in lockstep.
        max_faces: Longest mesh (9 * max_faces + 2 tokens).
        points: (B, N, 3) conditioning point cloud, for a point-cloud model.
        n_faces: (B,) requested face counts, for a face-count-controlled model.
        robust: Mask logits with `order_mask`; False samples the raw distribution.
        temperature: Softmax temperature (> 0).
        generator: Sampling RNG.
        stop_at_eos: False decodes all 9 * max_faces tokens with EOS masked out
            (throughput measurements at a fixed length).

    Returns:
        A `Generation`.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if batch_size < 1 or max_faces < 1:
        raise ValueError("batch_size and max_faces must be >= 1")
    if model.cfg.vocab_size != tok.vocab_size:
        raise ValueError(f"model vocab_size={model.cfg.vocab_size} != tokenizer's {tok.vocab_size}")
    model.eval()
    dev = model.embed.weight.device
    max_len = 2 + 9 * max_faces
    state = model.new_state(batch_size, max_len, points, n_faces)
    seq = torch.full((batch_size, 1), tok.bos, dtype=torch.long, device=dev)
    done = torch.zeros(batch_size, dtype=torch.bool, device=dev)
    dead = torch.zeros(batch_size, dtype=torch.bool, device=dev)
    n_tokens = 0
    t0 = time.perf_counter()
    for _ in range(max_len - 1 if stop_at_eos else max_len - 2):  # fixed: 9 * max_faces
        logits = model.step(seq[:, -1], state).float() / temperature  # (B, V)
        if robust:
            allowed = order_mask(seq, tok, max_faces)
        else:
            allowed = torch.ones_like(logits, dtype=torch.bool)
        if not stop_at_eos:
            allowed[:, tok.eos] = False
        empty = ~allowed.any(1)
        dead |= empty & ~done
        allowed[empty, tok.eos] = True
        logits = logits.masked_fill(~allowed, float("-inf"))
        nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
        nxt = torch.where(done, torch.full_like(nxt, tok.pad), nxt)
        n_tokens += int((~done).sum())
        done |= nxt == tok.eos
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        if stop_at_eos and bool(done.all()):
            break
    seconds = time.perf_counter() - t0
    out = []
    for row in seq.cpu().numpy():
        end = np.flatnonzero(row == tok.eos)
        out.append(row[: end[0] + 1] if len(end) else row)  # padding only follows EOS
    return Generation(out, int(dead.sum()), seconds, n_tokens)
