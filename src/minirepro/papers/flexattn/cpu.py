"""Block-sparse FlexAttention on the CPU: forward and backward, only the listed blocks.

Without a score_mod, `flex_attention` first tries the fused plan of `cpu_fused.py`: the
listed blocks covered by a few large calls of PyTorch's fused CPU flash kernel on views of
q, k, v (causal squares, bands, diagonal runs, rectangles), merged by LSE. Masks that
would need many such calls (scattered blocks, tiles that differ per batch/head, paged
layouts) use the *bucketed* plan here: the query blocks of a (batch, head) group are
bucketed by how many key blocks they list, and each bucket is one call on its gathered
key blocks (slices when a lone query block's blocks are contiguous):

- no score_mod: `aten._scaled_dot_product_flash_attention_for_cpu` per bucket with an
  additive mask (0 on full blocks, mask_mod on partial tiles); the backward
  (`_FlexMaskOnly.backward`) calls the fused flash backward per bucket with the saved
  out and LSE;
- with a score_mod: the bucket's scores by one batched matmul, the score_mod and mask on
  the tile, a row-LSE softmax, times V; autograd goes through this, so gradients reach
  q, k, v *and* any tensor the score_mod captures (a learned bias). Memory is the listed
  blocks' area, never S x S.

The fused kernel returns lse = 0 with out = 0 for rows its mask empties entirely; those
rows get lse = -inf. Rows no block reaches give out = 0, lse = -inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from minirepro.core.precision import fp32_kernel
from minirepro.papers.flexattn.block_mask import BlockMask, create_block_mask
from minirepro.papers.flexattn.cpu_fused import FlexFused, fused_plan
from minirepro.papers.flexattn.masks import ScoreMod, noop_mask

__all__ = ["flex_attention"]

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
_NEG_INF = float("-inf")


@dataclass
class _Bucket:
    """Query blocks of one (batch, head) group that list the same number of key blocks.

    They run as one batched call: queries (r·B', H', qb, D) against their gathered key
    blocks (r·B', H', n·kb, D). A lone query block whose key blocks are contiguous uses
    slices of q, k, v instead of gathered copies (`q_slice`, `kv_slice`).
    """

    rows: Tensor  # (r,) query block indices
    kv_blocks: Tensor  # (r, n) key block indices
    q_slice: tuple[int, int] | None
    kv_slice: tuple[int, int] | None
    q_pos: Tensor  # (r, tq, 1) query positions, clamped to the sequence
    kv_pos: Tensor  # (r, 1, tk) key positions, clamped
    dead: Tensor | None = None  # (r·B'|1, H'|1, tq): rows with no allowed key
    # Additive fp32 mask, 0 or -inf, broadcastable to (r·B', H', tq, tk); None: no mask.
    mask: Tensor | None = None


@dataclass
class _Group:
    """One (batch, head) slice of the BlockMask: all of B and H where it broadcasts."""

    b: slice
    h: slice
    buckets: list[_Bucket] = field(default_factory=list)


@dataclass
class _Plan:
    groups: list[_Group]
    n_q: int  # query blocks
    n_kv: int  # key blocks
    qb: int
    kb: int
    gathers: bool  # some bucket gathers blocks (q, k, v must be padded to whole blocks)


def _plan(bm: BlockMask, B: int, H: int, S: int, T: int, device) -> _Plan:
    """The buckets of `bm` for inputs (B, H, S, ·) with T keys, mask tiles evaluated once.

    Cached on the BlockMask: a BlockMask is built once and reused for many calls (every
    layer, every training step), as in the paper.
    """
    key = ("cpu", B, H, S, T, str(device))
    if key in bm._cache:
        return bm._cache[key]
    _check_mask(bm, B, H, S, T)
    qb, kb = bm.BLOCK_SIZE
    mB, mH = bm.kv_num_blocks.shape[:2]
    n_q, n_kv = -(-S // qb), -(-T // kb)
    num, idx = bm.kv_num_blocks.tolist(), bm.kv_indices.tolist()
    has_full = bm.full_kv_num_blocks is not None
    if has_full:
        fnum, fidx = bm.full_kv_num_blocks.tolist(), bm.full_kv_indices.tolist()
    b_all, h_all = torch.arange(B, device=device), torch.arange(H, device=device)

    def order(bi):
        if bm._block_order is None:
            return None
        return lambda blk: bm._block_order(bi, blk)

    plan = _Plan([], n_q, n_kv, qb, kb, gathers=False)
    for bi in range(mB):
        for hi in range(mH):
            group = _Group(
                slice(None) if mB == 1 else slice(bi, bi + 1),
                slice(None) if mH == 1 else slice(hi, hi + 1),
            )
            by_count: dict[int, list[tuple[int, list[int], set[int]]]] = {}
            for i in range(n_q):
                part = {j for j in idx[bi][hi][i][: num[bi][hi][i]] if j < n_kv}
                full = set(fidx[bi][hi][i][: fnum[bi][hi][i]]) if has_full else set()
                blocks = sorted(part | {j for j in full if j < n_kv}, key=order(bi))
                if blocks:
                    by_count.setdefault(len(blocks), []).append((i, blocks, part))
            for n, members in sorted(by_count.items()):
                group.buckets.append(
                    _bucket(bm, members, n, b_all[group.b], h_all[group.h], S, T, qb, kb)
                )
            plan.groups.append(group)
    for group in plan.groups:
        for bucket in group.buckets:
            plan.gathers |= bucket.q_slice is None or bucket.kv_slice[1] > T
    bm._cache[key] = plan
    return plan


def _check_mask(bm: BlockMask, B: int, H: int, S: int, T: int) -> None:
    """ValueError unless `bm` broadcasts to (B, H) and covers S queries and T keys."""
    mB, mH = bm.kv_num_blocks.shape[:2]
    if mB not in (1, B) or mH not in (1, H):
        raise ValueError(
            f"BlockMask batch/head dims {(mB, mH)} do not broadcast to the input's {(B, H)}"
        )
    qb, kb = bm.BLOCK_SIZE
    if bm.kv_indices.shape[-2] < -(-S // qb) or bm.kv_indices.shape[-1] < -(-T // kb):
        raise ValueError(
            f"BlockMask covers seq_lengths {bm.seq_lengths}, inputs have Q_LEN={S}, KV_LEN={T}"
        )


def _bucket(bm, members, n, b_idx, h_idx, S, T, qb, kb) -> _Bucket:
    rows = torch.tensor([i for i, _, _ in members])
    kv_blocks = torch.tensor([blocks for _, blocks, _ in members])  # (r, n)
    first = members[0][1]
    lone = len(members) == 1 and first == list(range(first[0], first[-1] + 1))
    if lone:
        i, blocks, _ = members[0]
        q_slice = (i * qb, min((i + 1) * qb, S))
        # Whole blocks even past T (padding masked): the same widths as a gathered bucket,
        # so paged and contiguous layouts give bit-identical results.
        kv_slice = (blocks[0] * kb, (blocks[-1] + 1) * kb)
        q_pos = torch.arange(*q_slice)[None, :, None]
        kv_pos = torch.arange(*kv_slice)[None, None, :]
    else:
        q_slice = kv_slice = None
        q_pos = (rows[:, None] * qb + torch.arange(qb))[:, :, None]
        kv_pos = (kv_blocks[:, :, None] * kb + torch.arange(kb)).reshape(len(members), 1, n * kb)
    beyond = kv_pos >= T  # (r, 1, tk): padding of the last key block
    q_pos, kv_pos = q_pos.clamp(max=S - 1), kv_pos.clamp(max=T - 1)
    r, tq, tk = len(members), q_pos.shape[1], kv_pos.shape[2]
    # mask_mod runs on the partial tiles only, all of them in one call.
    tiles = [(a, j) for a, (_, blocks, part) in enumerate(members) for j, blk in enumerate(blocks)
             if blk in part]  # fmt: skip
    mask = torch.zeros(r, 1, 1, tq, n * kb)
    if tiles:
        rows_t = torch.tensor([a for a, _ in tiles])
        cols_t = torch.tensor([j for _, j in tiles])
        q_t = q_pos[rows_t]  # (P, tq, 1)
        kv_t = kv_blocks[rows_t, cols_t][:, None, None] * kb + torch.arange(kb)  # (P, 1, kb)
        mm = bm.mask_mod(
            b_idx[None, :, None, None, None],
            h_idx[None, None, :, None, None],
            q_t[:, None, None],
            kv_t.clamp(max=T - 1)[:, None, None],
        )
        mm = torch.as_tensor(mm, dtype=torch.bool)
        while mm.dim() < 5:
            mm = mm.unsqueeze(0)
        mask = mask.expand(r, mm.shape[1], mm.shape[2], tq, n * kb).contiguous()
        tile_vals = torch.zeros(mm.shape).masked_fill_(~mm, _NEG_INF)
        tile_vals = tile_vals.expand(len(tiles), *mask.shape[1:3], tq, kb)
        view = mask.view(r, *mask.shape[1:3], tq, n, kb)
        view[rows_t, :, :, :, cols_t] = tile_vals  # (P, Bm, Hm, tq, kb)
    mask = mask[..., :tk]
    any_masked = bool(beyond.any())
    if any_masked:
        mask = mask.masked_fill(beyond.view(r, 1, 1, 1, tk), _NEG_INF)
    if tiles:
        any_masked |= not bool(mm.all())
    # Only rows made of partial blocks alone can be entirely masked.
    dead = None
    only_partial = [a for a, (_, blocks, part) in enumerate(members) if set(blocks) <= part]
    if any_masked and only_partial:
        dead = torch.zeros(mask.shape[:-1], dtype=torch.bool)
        dead[only_partial] = torch.isneginf(mask[only_partial]).all(-1)
        if not bool(dead.any()):
            dead = None
    Bp = len(b_idx)
    if r > 1 and mask.shape[1] == 1 and Bp > 1:  # batch dim of a call is r·B', r-major
        mask = mask.expand(r, Bp, *mask.shape[2:])
        dead = None if dead is None else dead.expand(r, Bp, *dead.shape[2:])
    mask = mask.reshape(mask.shape[0] * mask.shape[1], *mask.shape[2:])
    if dead is not None:
        dead = dead.reshape(dead.shape[0] * dead.shape[1], *dead.shape[2:])
    return _Bucket(
        rows,
        kv_blocks,
        q_slice,
        kv_slice,
        q_pos,
        kv_pos,
        dead,
        mask.contiguous() if any_masked else None,
    )


def _additive(bucket: _Bucket, dtype) -> Tensor | None:
    """The bucket's additive mask in the query's dtype (the fused op wants them equal)."""
    if bucket.mask is None or bucket.mask.dtype == dtype:
        return bucket.mask
    return bucket.mask.to(dtype)


def _pad_blocks(x: Tensor, size: int, n: int) -> Tensor:
    """(B, H, L, D) -> (B, H, n, size, D), zero-padded to n whole blocks."""
    B, H, L, D = x.shape
    if L != n * size:
        x = torch.nn.functional.pad(x, (0, 0, 0, n * size - L))
    return x.view(B, H, n, size, D)


def _gather(x: Tensor, blocks: Tensor) -> Tensor:
    """(B', H', n_blocks, size, D)[…, blocks (r, n), …] -> (r·B', H', n·size, D)."""
    Bp, Hp, _, size, D = x.shape
    r, n = blocks.shape
    g = x[:, :, blocks.flatten()]  # (B', H', r·n, size, D)
    g = g.view(Bp, Hp, r, n * size, D).transpose(1, 2).transpose(0, 1)  # (r, B', H', n·size, D)
    return g.reshape(r * Bp, Hp, n * size, D)


def _bucket_inputs(bucket, q, k, v, qp, kp, vp, group):
    """The bucket's queries, keys and values: slices, or gathered from padded blocks."""
    if bucket.q_slice is not None:
        qs, ks = slice(*bucket.q_slice), slice(*bucket.kv_slice)
        if ks.stop > k.shape[2]:  # the last key block, padded
            k, v = kp.flatten(2, 3), vp.flatten(2, 3)
        return q[group.b, group.h, qs], k[group.b, group.h, ks], v[group.b, group.h, ks]
    rows = bucket.rows[:, None]
    return (
        _gather(qp[group.b, group.h], rows),
        _gather(kp[group.b, group.h], bucket.kv_blocks),
        _gather(vp[group.b, group.h], bucket.kv_blocks),
    )


def _scatter_rows(pieces: list[tuple[_Bucket, Tensor]], Bp, Hp, n_q, qb, S, tail) -> Tensor:
    """Bucket results (r·B', H', tq, *tail) -> (B', H', S, *tail); unlisted rows zero."""
    blocks = torch.zeros(n_q, Bp, Hp, qb, *tail, dtype=pieces[0][1].dtype) if pieces else None
    if blocks is None:
        return torch.zeros(Bp, Hp, S, *tail)
    for bucket, x in pieces:
        r = bucket.rows.numel()
        x = x.reshape(r, Bp, Hp, x.shape[2], *tail)
        if x.shape[3] != qb:
            blocks[bucket.rows, :, :, : x.shape[3]] = x
        else:
            blocks[bucket.rows] = x
    out = blocks.movedim(0, 2).reshape(Bp, Hp, n_q * qb, *tail)
    return out[:, :, :S]


def _forward_fused(q, k, v, plan: _Plan, scale: float):
    """Returns out (B, H, S, Dv), lse (B, H, S), and the per-bucket raw results."""
    B, H, S, _ = q.shape
    qp = kp = vp = None
    if plan.gathers:
        qp = _pad_blocks(q, plan.qb, plan.n_q)
        kp, vp = _pad_blocks(k, plan.kb, plan.n_kv), _pad_blocks(v, plan.kb, plan.n_kv)
    outs, lses, raw = [], [], []
    for group in plan.groups:
        Bp, Hp = len(range(B)[group.b]), len(range(H)[group.h])
        o_pieces, l_pieces = [], []
        for bucket in group.buckets:
            qg, kg, vg = _bucket_inputs(bucket, q, k, v, qp, kp, vp, group)
            mask = _additive(bucket, q.dtype)
            o, ls = _flash(qg, kg, vg, attn_mask=mask, scale=scale)
            raw.append((o, ls))
            ls = ls.float()
            if bucket.dead is not None:
                ls = ls.masked_fill(bucket.dead, _NEG_INF)
            o_pieces.append((bucket, o))
            l_pieces.append((bucket, ls))
        outs.append(_scatter_rows(o_pieces, Bp, Hp, plan.n_q, plan.qb, S, (v.shape[-1],)))
        lse = _scatter_rows(l_pieces, Bp, Hp, plan.n_q, plan.qb, S, ())
        if len(group.buckets) < plan.n_q:  # rows no block reaches
            listed = torch.zeros(plan.n_q * plan.qb, dtype=torch.bool)
            for bucket in group.buckets:
                for i in bucket.rows.tolist():
                    listed[i * plan.qb : (i + 1) * plan.qb] = True
            lse = lse.masked_fill(~listed[:S], _NEG_INF)
        lses.append(lse)
    return _assemble(plan, outs), _assemble(plan, lses), raw


def _assemble(plan: _Plan, parts: list[Tensor]) -> Tensor:
    """Per-group (B', H', ...) tensors -> (B, H, ...), groups in (batch, head) order."""
    if len(parts) == 1:
        return parts[0]
    n_h = sum(1 for g in plan.groups if g.b == plan.groups[0].b)
    rows = [torch.cat(parts[i : i + n_h], dim=1) for i in range(0, len(parts), n_h)]
    return torch.cat(rows, dim=0)


class _FlexMaskOnly(torch.autograd.Function):
    """Block-sparse attention without a score_mod, fused kernels forward and backward."""

    @staticmethod
    def forward(ctx, q, k, v, plan, scale, group):
        ke, ve = _expand_kv(k, group), _expand_kv(v, group)
        out, lse, raw = _forward_fused(q, ke, ve, plan, scale)
        ctx.save_for_backward(q, ke, ve)
        ctx.raw, ctx.plan, ctx.scale, ctx.group = raw, plan, scale, group
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v = ctx.saved_tensors
        plan = ctx.plan
        B, H, S, _ = q.shape
        T = k.shape[2]
        dout = dout.contiguous()
        qp = kp = vp = dop = None
        if plan.gathers:
            qp, dop = _pad_blocks(q, plan.qb, plan.n_q), _pad_blocks(dout, plan.qb, plan.n_q)
            kp, vp = _pad_blocks(k, plan.kb, plan.n_kv), _pad_blocks(v, plan.kb, plan.n_kv)
        dq_parts, dk_parts, dv_parts = [], [], []
        raw = iter(ctx.raw)
        for group in plan.groups:
            Bp, Hp = len(range(B)[group.b]), len(range(H)[group.h])
            dq_pieces = []
            # Key gradients accumulate block-major, (n_kv, B', H', kb, D): index_add_ over
            # dim 0 adds whole contiguous blocks (over a strided dim it is 10x slower).
            dkb = k.new_zeros(plan.n_kv, Bp, Hp, plan.kb, k.shape[-1])
            dvb = v.new_zeros(plan.n_kv, Bp, Hp, plan.kb, v.shape[-1])
            for bucket in group.buckets:
                o, ls = next(raw)
                qg, kg, vg = _bucket_inputs(bucket, q, k, v, qp, kp, vp, group)
                if bucket.q_slice is not None:
                    dog = dout[group.b, group.h, slice(*bucket.q_slice)]
                else:
                    dog = _gather(dop[group.b, group.h], bucket.rows[:, None])
                mask = _additive(bucket, q.dtype)
                gq, gk, gv = _flash_bwd(
                    dog, qg, kg, vg, o, ls, 0.0, False, attn_mask=mask, scale=ctx.scale
                )
                dq_pieces.append((bucket, gq))
                _add_blocks(dkb, gk, bucket, plan.kb)
                _add_blocks(dvb, gv, bucket, plan.kb)
            dq_parts.append(_scatter_rows(dq_pieces, Bp, Hp, plan.n_q, plan.qb, S, (q.shape[-1],)))
            dk_parts.append(dkb.movedim(0, 2).reshape(Bp, Hp, -1, k.shape[-1])[:, :, :T])
            dv_parts.append(dvb.movedim(0, 2).reshape(Bp, Hp, -1, v.shape[-1])[:, :, :T])
        dq, dk, dv = (_assemble(plan, p) for p in (dq_parts, dk_parts, dv_parts))
        if ctx.group > 1:
            dk = dk.view(B, H // ctx.group, ctx.group, T, -1).sum(2)
            dv = dv.view(B, H // ctx.group, ctx.group, T, -1).sum(2)
        return dq, dk, dv, None, None, None


def _add_blocks(acc: Tensor, g: Tensor, bucket: _Bucket, kb: int) -> None:
    """acc (n_kv, B', H', kb, D) += a bucket's key gradient g at its key blocks."""
    _, Bp, Hp, _, D = acc.shape
    if bucket.kv_slice is not None:  # g: (B', H', tk, D), contiguous blocks from lo
        lo, hi = bucket.kv_slice
        n = -(-(hi - lo) // kb)
        if g.shape[2] != n * kb:
            g = torch.nn.functional.pad(g, (0, 0, 0, n * kb - g.shape[2]))
        acc[lo // kb : lo // kb + n] += g.view(Bp, Hp, n, kb, D).movedim(2, 0)
        return
    r, n = bucket.kv_blocks.shape
    g = g.view(r, Bp, Hp, n, kb, D).transpose(1, 3).transpose(2, 3)  # (r, n, B', H', kb, D)
    acc.index_add_(0, bucket.kv_blocks.flatten(), g.reshape(r * n, Bp, Hp, kb, D))


def _forward_score_mod(q, k, v, plan: _Plan, scale: float, score_mod: ScoreMod):
    """Vectorised per bucket; differentiable by autograd (also w.r.t. captured tensors)."""
    B, H, S, _ = q.shape
    qp = kp = vp = None
    if plan.gathers:
        qp = _pad_blocks(q, plan.qb, plan.n_q)
        kp, vp = _pad_blocks(k, plan.kb, plan.n_kv), _pad_blocks(v, plan.kb, plan.n_kv)
    b_all, h_all = torch.arange(B), torch.arange(H)
    outs, lses = [], []
    for group in plan.groups:
        Bp, Hp = len(range(B)[group.b]), len(range(H)[group.h])
        o_pieces, l_pieces = [], []
        for bucket in group.buckets:
            qg, kg, vg = _bucket_inputs(bucket, q, k, v, qp, kp, vp, group)
            r = bucket.rows.numel()
            s = (qg @ kg.transpose(-1, -2)) * scale  # (r·B', H', tq, tk)
            b_idx = b_all[group.b].repeat(r)[:, None, None, None]
            q_idx = bucket.q_pos.repeat_interleave(Bp, 0)[:, None]  # (r·B', 1, tq, 1)
            kv_idx = bucket.kv_pos.repeat_interleave(Bp, 0)[:, None]  # (r·B', 1, 1, tk)
            s = score_mod(s, b_idx, h_all[group.h][None, :, None, None], q_idx, kv_idx)
            if bucket.mask is not None:
                s = s + bucket.mask.to(s.dtype)
            m = s.detach().amax(dim=-1, keepdim=True)
            m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
            e = torch.exp(s - m)
            denom = e.sum(dim=-1, keepdim=True)
            o = (e / torch.where(denom == 0, torch.ones_like(denom), denom)) @ vg
            o_pieces.append((bucket, o))
            l_pieces.append((bucket, (m + torch.log(denom)).squeeze(-1).float()))
        outs.append(_cat_rows(o_pieces, Bp, Hp, plan, S, q))
        lses.append(_cat_rows(l_pieces, Bp, Hp, plan, S, q))
    return _assemble(plan, outs), _assemble(plan, lses)


def _cat_rows(pieces, Bp, Hp, plan: _Plan, S: int, q: Tensor) -> Tensor:
    """Like `_scatter_rows`, but by cat and one gather, so autograd stays cheap."""
    is_lse = pieces[0][1].dim() == 3 if pieces else False
    tail = () if is_lse else (pieces[0][1].shape[-1],) if pieces else ()
    fill = _NEG_INF if is_lse else 0.0
    qb = plan.qb
    order, chunks = [], []
    for bucket, x in pieces:
        r = bucket.rows.numel()
        x = x.reshape(r, Bp, Hp, x.shape[2], *tail)
        if x.shape[3] != qb:
            pad = [0, 0] * len(tail) + [0, qb - x.shape[3]]
            x = torch.nn.functional.pad(x, pad, value=fill)
        chunks.append(x)
        order += bucket.rows.tolist()
    missing = [i for i in range(plan.n_q) if i not in set(order)]
    if missing or not chunks:
        filler = torch.full((len(missing), Bp, Hp, qb, *tail), fill, dtype=torch.float32)
        chunks.append(filler.to(chunks[0].dtype if chunks else q.dtype))
        order += missing
    inverse = torch.empty(plan.n_q, dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(plan.n_q)
    blocks = torch.cat(chunks)[inverse]  # (n_q, B', H', qb, *tail)
    return blocks.movedim(0, 2).reshape(Bp, Hp, plan.n_q * qb, *tail)[:, :, :S]


def _expand_kv(x: Tensor, group: int) -> Tensor:
    """(B, H_kv, T, D) -> (B, H_kv * group, T, D), head h reading kv head h // group."""
    if group == 1:
        return x
    B, Hkv, T, D = x.shape
    return x[:, :, None].expand(B, Hkv, group, T, D).reshape(B, Hkv * group, T, D)


_FULL_MASKS: dict[tuple, BlockMask] = {}


def _dense_block_mask(S: int, T: int, device) -> BlockMask:
    """The BlockMask of no mask: every block full (the reference's default)."""
    key = (S, T, str(device))
    if key not in _FULL_MASKS:
        if len(_FULL_MASKS) > 64:
            _FULL_MASKS.clear()
        _FULL_MASKS[key] = create_block_mask(noop_mask, None, None, S, T, device=device)
    return _FULL_MASKS[key]


@fp32_kernel  # fp32 kernels: under bf16 autocast the inputs are cast to fp32
def flex_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    score_mod: ScoreMod | None = None,
    block_mask: BlockMask | None = None,
    scale: float | None = None,
    enable_gqa: bool = False,
    return_lse: bool = False,
    kernel_options: dict | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Attention with a user score_mod and a block-sparse mask; the reference's signature.

    Args:
        query: (B, H, S, D).
        key: (B, H_kv, T, D).
        value: (B, H_kv, T, Dv).
        score_mod: `score_mod(score, b, h, q_idx, kv_idx) -> score`, or None.
        block_mask: From `create_block_mask`; None attends everywhere.
        scale: Score scale; 1/sqrt(D) by default.
        enable_gqa: Allow H to be a multiple of H_kv (grouped-query attention).
        return_lse: Also return the log-sum-exp of the scores, (B, H, S) fp32.
        kernel_options: Accepted for compatibility; {"backend": "triton"} forces the
            Triton kernel (GPU, or TRITON_INTERPRET=1); {"plan": "buckets"} forces the
            bucketed CPU plan instead of the fused calls of `cpu_fused.py`.

    Returns:
        out (B, H, S, Dv), and lse (B, H, S) if `return_lse`. Rows with no allowed key
        give out = 0 and lse = -inf.
    """
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        raise ValueError("query, key and value must be 4-D (B, H, S, D)")
    B, H, S, D = query.shape
    Hkv, T = key.shape[1], key.shape[2]
    if key.shape[0] not in (1, B) or value.shape[:3] != key.shape[:3] or key.shape[-1] != D:
        raise ValueError(
            f"shape mismatch: query {tuple(query.shape)}, key {tuple(key.shape)}, "
            f"value {tuple(value.shape)}"
        )
    if H != Hkv and not enable_gqa:
        raise ValueError(f"query has {H} heads, key {Hkv}: pass enable_gqa=True for GQA")
    if H % Hkv:
        raise ValueError(f"query heads {H} must be a multiple of key heads {Hkv}")
    if key.shape[0] == 1 and B > 1:  # one KV cache shared by the batch (paged attention)
        key, value = key.expand(B, *key.shape[1:]), value.expand(B, *value.shape[1:])
    if block_mask is None:
        block_mask = _dense_block_mask(S, T, query.device)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    backend = (kernel_options or {}).get("backend")
    if query.is_cuda or backend == "triton":
        from minirepro.papers.flexattn.triton_kernel import triton_flex_attention

        out, lse = triton_flex_attention(
            query, key, value, score_mod, block_mask, scale, return_lse=True
        )
        return (out, lse) if return_lse else out
    _check_mask(block_mask, B, H, S, T)
    group = H // Hkv
    fused = None
    if score_mod is None and (kernel_options or {}).get("plan") != "buckets":
        fused = fused_plan(block_mask, B, H, S, T)
    if fused is not None:
        out, lse = FlexFused.apply(
            query, _expand_kv(key, group), _expand_kv(value, group), fused, scale
        )
        return (out, lse) if return_lse else out
    plan = _plan(block_mask, B, H, S, T, query.device)
    if score_mod is None:
        out, lse = _FlexMaskOnly.apply(query, key, value, plan, scale, group)
    else:
        ke, ve = _expand_kv(key, group), _expand_kv(value, group)
        out, lse = _forward_score_mod(query, ke, ve, plan, scale, score_mod)
    return (out, lse) if return_lse else out
