"""Generation: token-by-token sampling with (rolling) caches and Meshtron's robust sampling.

Robust sampling masks the logits so the sequence can only be a canonical mesh
(`tokenizer.sequence_errors`): within a face each vertex is strictly above the previous one
in (z, y, x) order, each face is strictly above the previous face, EOS comes only at a
face boundary after at least one face, BOS/PAD never, and the last coordinate of a face
never makes it zero-area.

Each vertex, read as the code c = (z n + y) n + x, must lie in an interval [lo, hi] set by
what came before, chosen so that a valid completion always remains (lookahead): v0 stays
off the last (z, y) row (above it every point is on one line) and v1 <= N-2 leaves room
(N = n^3 codes); v0 may tie the previous face's first vertex only if the previous face
leaves room to exceed it, and so on. A token is allowed when some completion of the vertex
it starts or continues lands in the interval; v2 never enters the row holding v0 and v1.
A rare corner (a face tied with the previous one on v0 and v1 whose only larger v2 is on
their line) can still leave no token; `generate` ends such a row and counts a dead end.
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


def _vertex_bounds(cur: Tensor, prev: Tensor | None, slot: int, n: int) -> tuple[Tensor, Tensor]:
    """Inclusive code interval (B,), (B,) of vertex `slot` (0, 1, 2) of the current face.

    cur: (B, >= 3 slot) the face so far; prev: (B, 9) the previous face or None.
    """
    N = n**3
    code = lambda t: (t[:, 0] * n + t[:, 1]) * n + t[:, 2]  # noqa: E731  (B, 3) -> (B,)
    c = [code(cur[:, 3 * i : 3 * i + 3]) for i in range(slot)]
    p = [code(prev[:, 3 * i : 3 * i + 3]) for i in range(3)] if prev is not None else None
    hi = torch.full((cur.shape[0],), N - 3 + slot, dtype=torch.long, device=cur.device)
    if slot == 0:
        hi = hi.fill_(N - n - 1)  # off the last (z, y) row: above it everything is collinear
        lo = torch.zeros_like(hi)
        if p is not None:  # tie p0 only if (p1, p2) can still be exceeded
            tie_ok = ~((p[1] == N - 2) & (p[2] == N - 1))
            lo = torch.where(tie_ok, p[0], p[0] + 1)
        return lo, hi
    lo = c[slot - 1] + 1
    if p is not None:
        tied = torch.ones_like(lo, dtype=torch.bool)
        for i in range(slot):
            tied &= c[i] == p[i]
        if slot == 1:  # tie p1 only if p2 can still be exceeded
            need = torch.where(p[2] < N - 1, p[1], p[1] + 1)
        else:
            need = p[2] + 1
        lo = torch.where(tied, torch.maximum(lo, need), lo)
    return lo, hi


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
    n = tok.n_levels
    q, f = (P - 1) % 9, (P - 1) // 9  # position in the face, faces completed
    allowed = torch.zeros(B, tok.vocab_size, dtype=torch.bool, device=seq.device)
    if q == 0 and f >= 1:
        allowed[:, tok.eos] = True
        if max_faces is not None and f >= max_faces:
            return allowed
    cur = seq[:, P - q :]  # (B, q) the face so far
    prev = seq[:, P - q - 9 : P - q] if f >= 1 else None  # (B, 9)
    slot, k = divmod(q, 3)  # vertex of the face, coordinate of the vertex
    lo, hi = _vertex_bounds(cur, prev, slot, n)
    # codes reachable after this token: [base + t * step, base + (t + 1) * step - 1]
    step = n ** (2 - k)
    base = torch.zeros(B, dtype=torch.long, device=seq.device)
    for j in range(k):
        base = base + cur[:, 3 * slot + j] * n ** (2 - j)
    t = torch.arange(n, device=seq.device)[None]  # (1, n)
    first = base[:, None] + t * step
    last = first + step - 1
    allowed[:, :n] = torch.maximum(first, lo[:, None]) <= torch.minimum(last, hi[:, None])
    if q in (6, 7):  # v2 must not enter the (z, y) row that holds both v0 and v1
        same_row = (cur[:, 0] == cur[:, 3]) & (cur[:, 1] == cur[:, 4])  # (B,)
        if q == 6:  # the row is the top one of its z: that z leaves v2 only that row
            blocked = same_row & (cur[:, 1] == n - 1)
            allowed[blocked, cur[blocked, 0]] = False
        else:
            blocked = same_row & (cur[:, 6] == cur[:, 0])
            allowed[blocked, cur[blocked, 1]] = False
    if q == 8:  # the last coordinate must not make the face zero-area (collinear)
        allowed[:, :n] &= ~_collinear_x(cur, n)
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
