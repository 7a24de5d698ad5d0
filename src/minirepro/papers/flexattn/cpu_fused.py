"""Mask-only FlexAttention on the CPU as a few large fused calls on views (no copies).

The BlockMask's listed blocks (per (batch, head) group) are covered by a small number of
*calls*, each a batch of equal, contiguous pieces that are views of q, k and v:

- causal squares: a run of query blocks [a, a + m) whose blocks below the diagonal are all
  full and whose diagonal tiles equal the causal triangle is one `is_causal=True` square
  of m blocks; equal squares tiled back to back (document masks) are one batched call;
- diagonal runs: blocks (i, i + d) for consecutive i (the bands of sliding windows), each
  block one piece of the batch: full ones without a mask, partial ones with their tiles
  (one broadcast tile when all are equal), diagonal causal tiles with `is_causal`;
- rectangles: consecutive query blocks listing the same contiguous run of key blocks
  (prefix LM) as one piece.

Squares or not, and diagonals or rectangles for the full and for the partial blocks, are
chosen per mask to give the fewest calls; masks that still need many calls fall back to
the bucketed plan of `cpu.py` (`fused_plan` returns None). Each call runs
`aten._scaled_dot_product_flash_attention_for_cpu` on its views; the calls' outputs are
merged by their log-sum-exp. The backward runs the fused flash backward per call with
the *merged* out and LSE, which makes each call's dQ/dK/dV exactly its share of the
gradient (P = exp(S - lse), dS = P ⊙ (dP - rowsum(dO ⊙ O))).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from minirepro.papers.flexattn.block_mask import BlockMask

__all__ = ["FlexFused", "fused_plan"]

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
_NEG_INF = float("-inf")
# A plan with more calls than this (and than twice the bucketed plan's) is not used.
_MAX_CALLS = 12


@dataclass
class _Call:
    """`cnt` pieces: piece p covers query blocks q0 + p·mq ... and key blocks k0 + p·mk ...

    Attributes:
        q0, k0: First query / key block.
        cnt: Pieces, batched as the call's head dim.
        mq, mk: Blocks per piece along queries / keys.
        causal: `is_causal=True` (square pieces).
        mask: Additive fp32 mask (1 | cnt, mq·qb, mk·kb), or None.
        dead: (1 | cnt, mq·qb) rows the mask empties (the op returns lse 0 there), or None.
        band: The pieces overlap: query block p sees key blocks k0 + p + [0, mk) (k0 may be
            negative; keys outside the sequence are padding, masked).
    """

    q0: int
    k0: int
    cnt: int
    mq: int
    mk: int
    causal: bool = False
    mask: Tensor | None = None
    dead: Tensor | None = None
    band: bool = False  # piece p: query block p, key blocks k0 + p ... k0 + p + mk - 1


@dataclass
class _Group:
    b: slice
    h: slice
    calls: list[_Call]


@dataclass
class FusedPlan:
    groups: list[_Group]
    n_q: int
    n_kv: int
    qb: int
    kb: int

    @property
    def n_calls(self) -> int:
        return sum(len(g.calls) for g in self.groups)


def _tiles(bm: BlockMask, blocks: list[tuple[int, int]], b_idx, h_idx, S, T) -> Tensor | None:
    """mask_mod on the tiles (i, j) -> (P, qb, kb) bool, keys past T False.

    None when the tiles differ across the group's batches or heads (mask_mod reads b or h
    although the BlockMask broadcasts over them): the bucketed plan handles those.
    """
    qb, kb = bm.BLOCK_SIZE
    rows = torch.tensor([i for i, _ in blocks])
    cols = torch.tensor([j for _, j in blocks])
    q_pos = (rows[:, None] * qb + torch.arange(qb))[:, :, None]  # (P, qb, 1)
    kv_pos = (cols[:, None] * kb + torch.arange(kb))[:, None, :]  # (P, 1, kb)
    mm = bm.mask_mod(
        b_idx[None, :, None, None, None],
        h_idx[None, None, :, None, None],
        q_pos.clamp(max=S - 1)[:, None, None],
        kv_pos.clamp(max=T - 1)[:, None, None],
    )
    mm = torch.as_tensor(mm, dtype=torch.bool)
    while mm.dim() < 5:
        mm = mm.unsqueeze(0)
    if mm.shape[1] > 1 or mm.shape[2] > 1:
        return None
    return mm[:, 0, 0].expand(len(blocks), qb, kb) & (kv_pos < T)


def _runs(cols: list[int]) -> list[tuple[int, int]]:
    """Sorted ints -> maximal runs [lo, hi)."""
    out: list[tuple[int, int]] = []
    for c in cols:
        if out and out[-1][1] == c:
            out[-1] = (out[-1][0], c + 1)
        else:
            out.append((c, c + 1))
    return out


def _diagonal_runs(blocks: set[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """Blocks -> runs (i0, j0, cnt) of (i0 + p, j0 + p), p < cnt."""
    out = []
    for i, j in sorted(blocks, key=lambda ij: (ij[1] - ij[0], ij[0])):
        if out and out[-1][0] + out[-1][2] == i and out[-1][1] + out[-1][2] == j:
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + 1)
        else:
            out.append((i, j, 1))
    return out


def _rectangles(blocks: set[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """Blocks -> rectangles (i0, i1, j0, j1): consecutive rows with the same column run."""
    by_row: dict[int, list[int]] = {}
    for i, j in sorted(blocks):
        by_row.setdefault(i, []).append(j)
    done: list[tuple[int, int, int, int]] = []
    open_: dict[tuple[int, int], tuple[int, int]] = {}  # column run -> (first, last row)
    for i in sorted(by_row):
        runs = _runs(by_row[i])
        for run, (i0, last) in list(open_.items()):
            if run not in runs or last != i - 1:
                done.append((i0, last + 1, *run))
                del open_[run]
        for run in runs:
            i0, _ = open_.get(run, (i, i))
            open_[run] = (i0, i)
    done += [(i0, last + 1, *run) for run, (i0, last) in open_.items()]
    return done


def _squares(lt: dict[int, bool], full: set, n: int, max_size: int) -> list[tuple[int, int]]:
    """Causal squares (a, m): diagonal tiles causal, everything below them full."""
    out, i = [], 0
    while i < n:
        if not lt.get(i, False):
            i += 1
            continue
        a, m = i, 1
        while (
            m < max_size
            and lt.get(a + m, False)
            and all((a + m, j) in full for j in range(a, a + m))
        ):
            m += 1
        out.append((a, m))
        i = a + m
    return out


def _group_calls(bm, i_b, i_h, b_idx, h_idx, S, T, n_q, n_kv) -> list[_Call] | None:
    qb, kb = bm.BLOCK_SIZE
    num = bm.kv_num_blocks[i_b, i_h].tolist()
    idx = bm.kv_indices[i_b, i_h].tolist()
    partial = {(i, j) for i in range(n_q) for j in idx[i][: num[i]] if j < n_kv}
    full: set = set()
    if bm.full_kv_num_blocks is not None:
        fnum = bm.full_kv_num_blocks[i_b, i_h].tolist()
        fidx = bm.full_kv_indices[i_b, i_h].tolist()
        full = {(i, j) for i in range(n_q) for j in fidx[i][: fnum[i]] if j < n_kv}
    plist = sorted(partial)
    tiles = {}
    if plist:
        t = _tiles(bm, plist, b_idx, h_idx, S, T)
        if t is None:
            return None
        tiles = dict(zip(plist, t))
    lt: dict[int, bool] = {}
    if S == T and qb == kb:
        tril = torch.ones(qb, qb, dtype=torch.bool).tril()
        for i in range(n_q):
            if (i, i) in tiles:
                rows = min(qb, S - i * qb)  # rows past S are padding: not compared
                lt[i] = bool(torch.equal(tiles[(i, i)][:rows], tril[:rows]))

    band_calls: list[_Call] = []
    band = _band(partial | full, n_q, n_kv)
    if band is not None:
        d0, d1 = band
        a, b = max(0, -d0), min(n_q, n_kv - d1 + 1)  # rows whose windows are inside
        if b - a >= 2:
            band_calls = [_band_call(d0, d1, a, b, partial, tiles, qb, kb)]
            inner = {(i, j) for i in range(a, b) for j in range(i + d0, i + d1)}
            full, partial = full - inner, partial - inner
            lt = {i: x for i, x in lt.items() if not a <= i < b}
    best = None
    for max_size in (n_q, 1):  # squares as large as they go, or only diagonal tiles
        squares = _squares(lt, full, n_q, max_size)
        used = set()
        for a, m in squares:
            used |= {(i, j) for i in range(a, a + m) for j in range(a, i + 1)}
        calls: list = list(band_calls)
        # Equal squares back to back: one batched call.
        for a, m in squares:
            last = calls[-1] if calls else None
            if last and last.mq == m and last.q0 + last.cnt * m == a:
                last.cnt += 1
            else:
                calls.append(_Call(a, a, 1, m, m, causal=True))
        for kind, blocks in (("full", full - used), ("partial", partial - used)):
            diag = [_Call(i, j, c, 1, 1) for i, j, c in _diagonal_runs(blocks)]
            rect = [_Call(i0, j0, 1, i1 - i0, j1 - j0) for i0, i1, j0, j1 in _rectangles(blocks)]
            chosen = diag if len(diag) <= len(rect) else rect
            if kind == "partial":
                chosen = [_with_mask(c, tiles, qb, kb) for c in chosen]
            calls += chosen
        if best is None or len(calls) < len(best):
            best = calls
    return best


# Widest band (in key blocks) run as one call; wider ones go through diagonals/rectangles.
_MAX_BAND = 8


def _band(blocks: set, n_q: int, n_kv: int) -> tuple[int, int] | None:
    """(d0, d1) if every query block i lists exactly key blocks [i + d0, i + d1) (clipped to
    the sequence): a band, one call over overlapping key windows (sliding windows)."""
    rows: dict[int, list[int]] = {}
    for i, j in blocks:
        rows.setdefault(i, []).append(j)
    if len(rows) != n_q:
        return None
    d0 = min(min(js) - i for i, js in rows.items())
    d1 = max(max(js) + 1 - i for i, js in rows.items())
    if d1 - d0 > _MAX_BAND or d1 - d0 >= n_kv:
        return None
    for i, js in rows.items():
        if sorted(js) != list(range(max(0, i + d0), min(n_kv, i + d1))):
            return None
    return d0, d1


def _band_call(d0, d1, a, b, partial, tiles, qb, kb) -> _Call:
    """Query blocks [a, b) of a band: key windows [i + d0, i + d1) inside the sequence,
    as one call on overlapping views; mask 0 on full blocks, the tiles on partial ones."""
    ones = torch.ones(qb, kb, dtype=torch.bool)
    rows = [
        torch.cat([tiles[(i, j)] if (i, j) in partial else ones for j in range(i + d0, i + d1)], 1)
        for i in range(a, b)
    ]  # (qb, w·kb) each
    return _set_mask(_Call(a, a + d0, b - a, 1, d1 - d0, band=True), torch.stack(rows))


def _set_mask(call: _Call, allowed: Tensor) -> _Call:
    """call.mask (additive, one tile if all pieces agree) and dead rows from (cnt, L, Lk)."""
    if call.cnt > 1 and bool((allowed == allowed[:1]).all()):
        allowed = allowed[:1]
    if bool(allowed.all()):
        return call
    dead = ~allowed.any(-1)
    call.mask = torch.zeros(allowed.shape).masked_fill_(~allowed, _NEG_INF)
    call.dead = dead if bool(dead.any()) else None
    return call


def _with_mask(call: _Call, tiles: dict, qb: int, kb: int) -> _Call:
    """Adds the additive mask (and dead rows) of a call made of partial blocks."""
    pieces = []
    for p in range(call.cnt):
        i0, j0 = call.q0 + p * call.mq, call.k0 + p * call.mk
        rows = [torch.cat([tiles[(i, j)] for j in range(j0, j0 + call.mk)], 1)
                for i in range(i0, i0 + call.mq)]  # fmt: skip
        pieces.append(torch.cat(rows, 0))  # (mq·qb, mk·kb)
    return _set_mask(call, torch.stack(pieces))  # (cnt, mq·qb, mk·kb)


def fused_plan(bm: BlockMask, B: int, H: int, S: int, T: int) -> FusedPlan | None:
    """The calls covering `bm` for inputs (B, H, S, ·) with T keys, or None (too many).

    Cached on the BlockMask like the bucketed plan.
    """
    key = ("fused", B, H, S, T)
    if key in bm._cache:
        return bm._cache[key]
    plan = None
    if bm._block_order is None:  # paged masks keep the bucketed plan (bit-exact order)
        plan = _build(bm, B, H, S, T)
    bm._cache[key] = plan
    return plan


def _build(bm, B, H, S, T) -> FusedPlan | None:
    qb, kb = bm.BLOCK_SIZE
    n_q, n_kv = -(-S // qb), -(-T // kb)
    counts = bm.kv_num_blocks[..., :n_q]
    if bm.full_kv_num_blocks is not None:
        counts = counts + bm.full_kv_num_blocks[..., :n_q]
    n_buckets = max(len(set(row.tolist())) for row in counts.flatten(0, 1))
    mB, mH = bm.kv_num_blocks.shape[:2]
    b_all, h_all = torch.arange(B), torch.arange(H)
    groups = []
    for i_b in range(mB):
        for i_h in range(mH):
            gb = slice(None) if mB == 1 else slice(i_b, i_b + 1)
            gh = slice(None) if mH == 1 else slice(i_h, i_h + 1)
            calls = _group_calls(bm, i_b, i_h, b_all[gb], h_all[gh], S, T, n_q, n_kv)
            if calls is None:
                return None
            groups.append(_Group(gb, gh, calls))
    plan = FusedPlan(groups, n_q, n_kv, qb, kb)
    limit = max(_MAX_CALLS, 2 * n_buckets) * len(groups)
    return plan if plan.n_calls <= limit else None


def _views(x: Tensor, g: _Group, first: int, cnt: int, m: int, size: int) -> Tensor:
    """Rows [first·size, (first + cnt·m)·size) of x[g.b, g.h] as (B'·H', cnt, m·size, D)."""
    x = x[g.b, g.h, first * size : (first + cnt * m) * size]
    Bp, Hp, _, D = x.shape
    return x.view(Bp * Hp, cnt, m * size, D)


def _band_view(x: Tensor, g: _Group, c: _Call, size: int) -> Tensor:
    """Overlapping key windows of x[g.b, g.h]: (B'·H', cnt, mk·size, D), no copy."""
    x = x[g.b, g.h]
    Bp, Hp, T, D = x.shape
    x = x.view(Bp * Hp, T, D)
    sb, st, sd = x.stride()
    start = x.storage_offset() + c.k0 * size * st  # as_strided's offset is absolute
    return x.as_strided((Bp * Hp, c.cnt, c.mk * size, D), (sb, size * st, st, sd), start)


def _call_kv(c: _Call, g: _Group, kp: Tensor, vp: Tensor, kb: int):
    if c.band:
        return _band_view(kp, g, c, kb), _band_view(vp, g, c, kb)
    return _views(kp, g, c.k0, c.cnt, c.mk, kb), _views(vp, g, c.k0, c.cnt, c.mk, kb)


def _pad(x: Tensor, n: int) -> Tensor:
    """(B, H, L, D) contiguous, zero-padded to n rows (no copy when already so)."""
    x = x.contiguous()
    if x.shape[2] == n:
        return x
    return torch.nn.functional.pad(x, (0, 0, 0, n - x.shape[2]))


def _fused_forward(q, k, v, plan: FusedPlan, scale: float):
    """out (B, H, S, Dv), lse (B, H, S) fp32; padded rows cropped."""
    B, H, S, _ = q.shape
    Sp, Tp = plan.n_q * plan.qb, plan.n_kv * plan.kb
    qp, kp, vp = _pad(q, Sp), _pad(k, Tp), _pad(v, Tp)
    out = lse = None
    uncovered: list = []
    whole = len(plan.groups) == 1
    for g in plan.groups:
        covered = [False] * plan.n_q
        for c in g.calls:
            qv = _views(qp, g, c.q0, c.cnt, c.mq, plan.qb)
            kv, vv = _call_kv(c, g, kp, vp, plan.kb)
            mask = None if c.mask is None else c.mask.to(q.dtype)[None]
            o, ls = _flash(qv, kv, vv, is_causal=c.causal, attn_mask=mask, scale=scale)
            if c.dead is not None:
                ls = ls.masked_fill(c.dead[None], _NEG_INF)
            Bp, Hp = qp[g.b, g.h].shape[:2]
            o = o.view(Bp, Hp, -1, o.shape[-1])  # (B', H', cnt·mq·qb, Dv)
            ls = ls.reshape(Bp, Hp, -1).float()
            blocks = range(c.q0, c.q0 + c.cnt * c.mq)
            if out is None and whole and len(blocks) == plan.n_q:
                out, lse = o, ls  # the call covers every row: its result is the output
            else:
                if out is None:  # rows no call covers are filled at the end
                    out = q.new_empty(B, H, Sp, v.shape[-1])
                    lse = torch.empty(B, H, Sp)
                rows = slice(c.q0 * plan.qb, (c.q0 + c.cnt * c.mq) * plan.qb)
                if not any(covered[i] for i in blocks):
                    out[g.b, g.h, rows] = o
                    lse[g.b, g.h, rows] = ls
                else:
                    for i in (i for i in blocks if not covered[i]):  # fill, then merge
                        out[g.b, g.h, i * plan.qb : (i + 1) * plan.qb] = 0.0
                        lse[g.b, g.h, i * plan.qb : (i + 1) * plan.qb] = _NEG_INF
                    _merge(out[g.b, g.h, rows], lse[g.b, g.h, rows], o, ls)
            for i in blocks:
                covered[i] = True
        if not all(covered):
            uncovered.append((g, covered))
    if out is None:  # no block listed at all
        out, lse = q.new_zeros(B, H, Sp, v.shape[-1]), torch.full((B, H, Sp), _NEG_INF)
        uncovered = []
    for g, covered in uncovered:
        for i in (i for i, c in enumerate(covered) if not c):
            rows = slice(i * plan.qb, (i + 1) * plan.qb)
            out[g.b, g.h, rows] = 0.0
            lse[g.b, g.h, rows] = _NEG_INF
    return out[:, :, :S], lse[:, :, :S]


def _merge(out: Tensor, lse: Tensor, o: Tensor, ls: Tensor) -> None:
    """In place: (out, lse) <- the softmax-weighted union of (out, lse) and (o, ls).

    Eight ops on purpose: on a loaded machine every op costs a scheduling delay.
    """
    new = torch.logaddexp(lse, ls)
    w = (lse - new).exp_().nan_to_num_(nan=0.0)  # rows empty in both: 0 (and o is 0)
    out.mul_(w[..., None]).addcmul_(o, (1.0 - w)[..., None].to(o.dtype))
    lse.copy_(new)


class FlexFused(torch.autograd.Function):
    """Mask-only block-sparse attention as a few fused calls, forward and backward."""

    @staticmethod
    def forward(ctx, q, k, v, plan: FusedPlan, scale: float):
        out, lse = _fused_forward(q, k, v, plan, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.scale = plan, scale
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        plan = ctx.plan
        S, T = q.shape[2], k.shape[2]
        Sp, Tp = plan.n_q * plan.qb, plan.n_kv * plan.kb
        qp, kp, vp = _pad(q, Sp), _pad(k, Tp), _pad(v, Tp)
        dop, op = _pad(dout, Sp), _pad(out, Sp)
        # Rows no key reaches: lse 0 (P is 0 there anyway: all their scores are masked).
        lsep = torch.nn.functional.pad(lse.masked_fill(torch.isneginf(lse), 0.0), (0, Sp - S))
        dq, dk, dv = (x.new_zeros(x.shape) for x in (qp, kp, vp))
        for g in plan.groups:
            for c in g.calls:
                qv = _views(qp, g, c.q0, c.cnt, c.mq, plan.qb)
                kv, vv = _call_kv(c, g, kp, vp, plan.kb)
                ov = _views(op, g, c.q0, c.cnt, c.mq, plan.qb)
                dov = _views(dop, g, c.q0, c.cnt, c.mq, plan.qb)
                lv = _views(lsep[..., None], g, c.q0, c.cnt, c.mq, plan.qb)[..., 0]
                mask = None if c.mask is None else c.mask.to(q.dtype)[None]
                gq, gk, gv = _flash_bwd(
                    dov, qv, kv, vv, ov, lv, 0.0, c.causal, attn_mask=mask, scale=ctx.scale
                )
                _views(dq, g, c.q0, c.cnt, c.mq, plan.qb).add_(gq)
                if c.band:
                    _add_band(dk, gk, g, c, plan.kb)
                    _add_band(dv, gv, g, c, plan.kb)
                else:
                    _views(dk, g, c.k0, c.cnt, c.mk, plan.kb).add_(gk)
                    _views(dv, g, c.k0, c.cnt, c.mk, plan.kb).add_(gv)
        return dq[:, :, :S], dk[:, :, :T], dv[:, :, :T], None, None


def _add_band(acc: Tensor, g_: Tensor, g: _Group, c: _Call, kb: int) -> None:
    """acc (B, H, T, D) += a band's key gradient (B'·H', cnt, mk·kb, D), one shift at a time."""
    a = acc[g.b, g.h]
    Bp, Hp, T, D = a.shape
    blocks = a.view(Bp * Hp, T // kb, kb, D)  # a view: adds land in acc
    g_ = g_.view(Bp * Hp, c.cnt, c.mk, kb, D)
    for s in range(c.mk):  # piece p's s-th key block is block k0 + p + s
        blocks[:, c.k0 + s : c.k0 + s + c.cnt] += g_[:, :, s]
