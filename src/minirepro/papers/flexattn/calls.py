"""The "calls" strategy (see `plan.py`): mask-only attention as a few fused flash calls.

Each call runs `aten._scaled_dot_product_flash_attention_for_cpu` on views of q, k and v
(no gathers; bands on overlapping `as_strided` windows); the calls' outputs are merged by
their log-sum-exp. The backward runs the fused flash backward per call with the *merged*
out and LSE, which makes each call's dQ/dK/dV exactly its share of the gradient
(P = exp(S - lse), dS = P ⊙ (dP - rowsum(dO ⊙ O))).
"""

from __future__ import annotations

import torch
from torch import Tensor

from minirepro.papers.flexattn.plan import Call, Group, Plan

__all__ = ["FlexCalls", "pad_rows"]

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
_NEG_INF = float("-inf")


def _views(x: Tensor, g: Group, first: int, cnt: int, m: int, size: int) -> Tensor:
    """Rows [first·size, (first + cnt·m)·size) of x[g.b, g.h] as (B'·H', cnt, m·size, D)."""
    x = x[g.b, g.h, first * size : (first + cnt * m) * size]
    Bp, Hp, _, D = x.shape
    return x.view(Bp * Hp, cnt, m * size, D)


def _band_view(x: Tensor, g: Group, c: Call, size: int) -> Tensor:
    """Overlapping key windows of x[g.b, g.h]: (B'·H', cnt, mk·size, D), no copy."""
    x = x[g.b, g.h]
    Bp, Hp, T, D = x.shape
    x = x.view(Bp * Hp, T, D)
    sb, st, sd = x.stride()
    start = x.storage_offset() + c.k0 * size * st  # as_strided's offset is absolute
    return x.as_strided((Bp * Hp, c.cnt, c.mk * size, D), (sb, size * st, st, sd), start)


def _call_kv(c: Call, g: Group, kp: Tensor, vp: Tensor, kb: int):
    if c.band:
        return _band_view(kp, g, c, kb), _band_view(vp, g, c, kb)
    return _views(kp, g, c.k0, c.cnt, c.mk, kb), _views(vp, g, c.k0, c.cnt, c.mk, kb)


def pad_rows(x: Tensor, n: int) -> Tensor:
    """(B, H, L, D) contiguous, zero-padded to n rows (no copy when already so)."""
    x = x.contiguous()
    if x.shape[2] == n:
        return x
    return torch.nn.functional.pad(x, (0, 0, 0, n - x.shape[2]))


def _calls_forward(q, k, v, plan: Plan, scale: float):
    """out (B, H, S, Dv), lse (B, H, S) fp32; padded rows cropped."""
    B, H, S, _ = q.shape
    Sp, Tp = plan.n_q * plan.qb, plan.n_kv * plan.kb
    qp, kp, vp = pad_rows(q, Sp), pad_rows(k, Tp), pad_rows(v, Tp)
    out = lse = None
    uncovered: list = []
    whole = len(plan.groups) == 1
    for g in plan.groups:
        covered = [False] * plan.n_q
        for c in g.calls:
            qv = _views(qp, g, c.q0, c.cnt, c.mq, plan.qb)
            kv, vv = _call_kv(c, g, kp, vp, plan.kb)
            mask = c.mask(g.tiles, q.dtype)
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


class FlexCalls(torch.autograd.Function):
    """Mask-only block-sparse attention as a few fused calls, forward and backward."""

    @staticmethod
    def forward(ctx, q, k, v, plan: Plan, scale: float):
        out, lse = _calls_forward(q, k, v, plan, scale)
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
        qp, kp, vp = pad_rows(q, Sp), pad_rows(k, Tp), pad_rows(v, Tp)
        dop, op = pad_rows(dout, Sp), pad_rows(out, Sp)
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
                mask = c.mask(g.tiles, q.dtype)
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


def _add_band(acc: Tensor, g_: Tensor, g: Group, c: Call, kb: int) -> None:
    """acc (B, H, T, D) += a band's key gradient (B'·H', cnt, mk·kb, D), one shift at a time."""
    a = acc[g.b, g.h]
    Bp, Hp, T, D = a.shape
    blocks = a.view(Bp * Hp, T // kb, kb, D)  # a view: adds land in acc
    g_ = g_.view(Bp * Hp, c.cnt, c.mk, kb, D)
    for s in range(c.mk):  # piece p's s-th key block is block k0 + p + s
        blocks[:, c.k0 + s : c.k0 + s + c.cnt] += g_[:, :, s]
