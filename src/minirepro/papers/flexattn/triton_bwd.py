"""FlexAttention backward in Triton (FlashAttention-2 style), for the same BlockMask.

The forward (`triton_kernel.py`) saves out and the natural-log LSE. The backward
recomputes P = exp(score_mod(q·kᵀ·scale) - lse) tile by tile and never stores it:

- `delta = rowsum(dO ⊙ O)` (torch, (B, H, S) fp32);
- `_flex_bwd_dq`: one program per (query block, batch·head), walking the query block's
  key blocks (`full_kv_indices` without mask_mod, then `kv_indices` with it):
  dP = dO·Vᵀ, dS = P ⊙ (dP - delta) ⊙ score_mod'(s), dQ += dS·K·scale;
- `_flex_bwd_dkdv`: one program per (key block, batch·kv head), walking, for every query
  head of the kv head's GQA group, the key block's *query* blocks (the BlockMask's q-side
  lists `full_q_indices` / `q_indices`): dV += Pᵀ·dO, dK += dSᵀ·Q·scale. The group's heads
  are summed inside the program, so no atomics are needed.

score_mod derivatives the kernel can express: none (identity), any score_mod that adds a
term independent of the score (`make_alibi`, relative biases: derivative 1) and
`make_softcap` (1 - tanh²(s / cap)). Other score_mods raise at the forward call that
would need them. Gradients of tensors captured by the score_mod are not computed here
(the CPU path has them).
"""

from __future__ import annotations

import weakref

import torch
import triton
import triton.language as tl
from torch import Tensor

from minirepro.papers.flexattn.block_mask import BlockMask, _transpose_ordered

__all__ = ["TritonFlexFunction", "score_mod_grad"]


# composed score_mod -> its generated derivative (None: 1); weak so mods can be freed
_GRADS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@triton.jit
def _softcap_grad(score, b, h, q_idx, kv_idx, cap):
    """d/ds cap·tanh(s / cap) = 1 - tanh²(s / cap), tanh from exp (no overflow)."""
    t = tl.exp(-2.0 * tl.abs(score / cap))
    th = (1.0 - t) / (1.0 + t)
    return 1.0 - th * th


def score_mod_grad(score_mod, score_fn):
    """The jitted derivative of a score_mod w.r.t. the score, or None where it is 1.

    Known: no score_mod, `make_alibi` (1), `make_softcap` (1 - tanh²). A user score_mod
    can declare its derivative as a `score_grad` attribute: a `def` with the score_mod's
    signature returning d score_mod / d score (e.g. `1.0` for an additive relative bias),
    jitted like the score_mod itself.

    Raises:
        NotImplementedError: The kernel has no derivative for this score_mod.
    """
    from minirepro.papers.flexattn.triton_kernel import (
        _alibi,
        _compose,
        _jit_user_fn,
        _softcap,
        _translate,
        composition,
    )

    if score_fn is None or score_fn is _alibi:
        return None
    if score_fn is _softcap:
        return _softcap_grad
    comp = composition(score_mod)
    if comp is not None:  # offset or chain of known derivatives, generated once per mod
        if score_mod not in _GRADS:
            parts = [_translate(p, "score_mod", "cpu", 0, 0) for p in comp[1]]
            grads = [score_mod_grad(p, fn) for p, (fn, _) in zip(comp[1], parts)]
            if all(g is None for g in grads):
                _GRADS[score_mod] = None
            elif comp[0] == "offset":
                _GRADS[score_mod] = _compose(score_mod, [(grads[0], parts[0][1])])
            else:
                _GRADS[score_mod] = _compose(score_mod, parts, grads)
        return _GRADS[score_mod]
    declared = getattr(score_mod, "score_grad", None)
    if declared is not None:
        return _jit_user_fn(declared, "score_grad")
    name = getattr(score_mod, "__name__", repr(score_mod))
    raise NotImplementedError(
        f"the Triton backward has no derivative for score_mod {name!r}: it knows make_alibi "
        "and make_softcap, or a `score_grad` attribute on the score_mod (a def returning "
        "d score_mod / d score); otherwise use CPU tensors (the stream strategy differentiates any "
        "score_mod) or run the Triton kernel under torch.no_grad()"
    )


@triton.jit
def _tile_scores(
    q, k, b, h, q_idx, kv_idx, col_ok, is_full, scale,
    MASK_AUX, SCORE_AUX,
    MASK_MOD: tl.constexpr, SCORE_MOD: tl.constexpr, SCORE_GRAD: tl.constexpr,
    MASK_HAS_AUX: tl.constexpr, SCORE_HAS_AUX: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Masked, score_mod'ed scores (M, N) of q (M, D) and k (N, D), and d score_mod / ds."""
    if IEEE:
        raw = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        raw = tl.dot(q, tl.trans(k))
    raw = raw * scale
    s = raw
    if SCORE_MOD is not None:
        if SCORE_HAS_AUX:
            s = SCORE_MOD(raw, b, h, q_idx, kv_idx, SCORE_AUX)
        else:
            s = SCORE_MOD(raw, b, h, q_idx, kv_idx)
    grad = tl.full(raw.shape, 1.0, tl.float32)
    if SCORE_GRAD is not None:
        if SCORE_HAS_AUX:
            grad = grad * SCORE_GRAD(raw, b, h, q_idx, kv_idx, SCORE_AUX)
        else:
            grad = grad * SCORE_GRAD(raw, b, h, q_idx, kv_idx)
    keep = col_ok[None, :] & (q_idx >= 0)  # (M, N)
    if MASK_MOD is not None:
        if not is_full:
            if MASK_HAS_AUX:
                keep = keep & MASK_MOD(b, h, q_idx, kv_idx, MASK_AUX)
            else:
                keep = keep & MASK_MOD(b, h, q_idx, kv_idx)
    return tl.where(keep, s, float("-inf")), grad


@triton.jit
def _flex_bwd_dq(
    Q, K, V, DO, LSE, DELTA, DQ,
    KV_NUM, KV_IDX, FULL_NUM, FULL_IDX,
    MASK_AUX, SCORE_AUX,
    sqb, sqh, sqs, sqd,
    skb, skh, sks, skd,
    svb, svh, svs, svd,
    sdob, sdoh, sdos, sdod,
    slb, slh, sls,
    sdqb, sdqh, sdqs, sdqd,
    snb, snh, snq,
    sib, sih, siq, sik,
    sfnb, sfnh, sfnq,
    sfib, sfih, sfiq, sfik,
    H, S, T, GROUP, scale,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MASK_MOD: tl.constexpr, SCORE_MOD: tl.constexpr, SCORE_GRAD: tl.constexpr,
    HAS_FULL: tl.constexpr, MASK_HAS_AUX: tl.constexpr, SCORE_HAS_AUX: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    qblk = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // GROUP

    offs_m = qblk * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < S
    q_idx = tl.minimum(offs_m, S - 1)[:, None]  # (M, 1)
    d_ok = offs_d[None, :] < D
    dv_ok = offs_dv[None, :] < DV

    q = tl.load(
        Q + b * sqb + h * sqh + offs_m[:, None] * sqs + offs_d[None, :] * sqd,
        mask=row_ok[:, None] & d_ok,
        other=0.0,
    )  # (M, D)
    do = tl.load(
        DO + b * sdob + h * sdoh + offs_m[:, None] * sdos + offs_dv[None, :] * sdod,
        mask=row_ok[:, None] & dv_ok,
        other=0.0,
    )  # (M, Dv)
    lse = tl.load(LSE + b * slb + h * slh + offs_m * sls, mask=row_ok, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse)  # dead rows: P = 0
    delta = tl.load(DELTA + b * slb + h * slh + offs_m * sls, mask=row_ok, other=0.0)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    n_full = 0
    if HAS_FULL:
        n_full = tl.load(FULL_NUM + b * sfnb + h * sfnh + qblk * sfnq)
    n_part = tl.load(KV_NUM + b * snb + h * snh + qblk * snq)
    for j in range(0, n_full + n_part):
        is_full = j < n_full
        if is_full:
            blk = tl.load(FULL_IDX + b * sfib + h * sfih + qblk * sfiq + j * sfik)
        else:
            blk = tl.load(KV_IDX + b * sib + h * sih + qblk * siq + (j - n_full) * sik)
        offs_kv = blk * BLOCK_N + offs_n
        col_ok = offs_kv < T
        kv_idx = tl.minimum(offs_kv, T - 1)[None, :]  # (1, N)
        k = tl.load(
            k_base + offs_kv[:, None] * sks + offs_d[None, :] * skd,
            mask=col_ok[:, None] & d_ok,
            other=0.0,
        )  # (N, D)
        v = tl.load(
            v_base + offs_kv[:, None] * svs + offs_dv[None, :] * svd,
            mask=col_ok[:, None] & dv_ok,
            other=0.0,
        )  # (N, Dv)
        s, grad = _tile_scores(
            q, k, b, h, q_idx, kv_idx, col_ok, is_full, scale, MASK_AUX, SCORE_AUX,
            MASK_MOD, SCORE_MOD, SCORE_GRAD, MASK_HAS_AUX, SCORE_HAS_AUX, IEEE,
        )  # fmt: skip
        p = tl.exp(s - lse[:, None])  # (M, N)
        if IEEE:
            dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        else:
            dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None]) * grad
        if IEEE:
            dq += tl.dot(ds.to(k.dtype), k, input_precision="ieee")
        else:
            dq += tl.dot(ds.to(k.dtype), k)
    dq = dq * scale
    tl.store(
        DQ + b * sdqb + h * sdqh + offs_m[:, None] * sdqs + offs_d[None, :] * sdqd,
        dq.to(DQ.dtype.element_ty),
        mask=row_ok[:, None] & d_ok,
    )


@triton.jit
def _flex_bwd_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV_,
    Q_NUM, Q_IDX, FULL_Q_NUM, FULL_Q_IDX,
    MASK_AUX, SCORE_AUX,
    sqb, sqh, sqs, sqd,
    skb, skh, sks, skd,
    svb, svh, svs, svd,
    sdob, sdoh, sdos, sdod,
    slb, slh, sls,
    sdkb, sdkh, sdks, sdkd,
    sdvb, sdvh, sdvs, sdvd,
    snb, snh, snk,
    sib, sih, sik, siq,
    sfnb, sfnh, sfnk,
    sfib, sfih, sfik, sfiq,
    HKV, S, T, GROUP, scale,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MASK_MOD: tl.constexpr, SCORE_MOD: tl.constexpr, SCORE_GRAD: tl.constexpr,
    HAS_FULL: tl.constexpr, MASK_HAS_AUX: tl.constexpr, SCORE_HAS_AUX: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    kvblk = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HKV
    hk = bh % HKV

    offs_kv = kvblk * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    col_ok = offs_kv < T
    kv_idx = tl.minimum(offs_kv, T - 1)[None, :]  # (1, N)
    d_ok = offs_d[None, :] < D
    dv_ok = offs_dv[None, :] < DV

    k = tl.load(
        K + b * skb + hk * skh + offs_kv[:, None] * sks + offs_d[None, :] * skd,
        mask=col_ok[:, None] & d_ok,
        other=0.0,
    )  # (N, D)
    v = tl.load(
        V + b * svb + hk * svh + offs_kv[:, None] * svs + offs_dv[None, :] * svd,
        mask=col_ok[:, None] & dv_ok,
        other=0.0,
    )  # (N, Dv)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)

    for g in range(0, GROUP):  # the query heads reading this kv head
        h = hk * GROUP + g
        n_full = 0
        if HAS_FULL:
            n_full = tl.load(FULL_Q_NUM + b * sfnb + h * sfnh + kvblk * sfnk)
        n_part = tl.load(Q_NUM + b * snb + h * snh + kvblk * snk)
        for j in range(0, n_full + n_part):
            is_full = j < n_full
            if is_full:
                qblk = tl.load(FULL_Q_IDX + b * sfib + h * sfih + kvblk * sfik + j * sfiq)
            else:
                qblk = tl.load(Q_IDX + b * sib + h * sih + kvblk * sik + (j - n_full) * siq)
            offs_m = qblk * BLOCK_M + offs_m0
            row_ok = offs_m < S
            q_idx = tl.minimum(offs_m, S - 1)[:, None]  # (M, 1)
            q = tl.load(
                Q + b * sqb + h * sqh + offs_m[:, None] * sqs + offs_d[None, :] * sqd,
                mask=row_ok[:, None] & d_ok,
                other=0.0,
            )  # (M, D)
            do = tl.load(
                DO + b * sdob + h * sdoh + offs_m[:, None] * sdos + offs_dv[None, :] * sdod,
                mask=row_ok[:, None] & dv_ok,
                other=0.0,
            )  # (M, Dv)
            lse = tl.load(LSE + b * slb + h * slh + offs_m * sls, mask=row_ok, other=float("inf"))
            lse = tl.where(lse == float("-inf"), float("inf"), lse)
            delta = tl.load(DELTA + b * slb + h * slh + offs_m * sls, mask=row_ok, other=0.0)
            s, grad = _tile_scores(
                q, k, b, h, q_idx, kv_idx, col_ok, is_full, scale, MASK_AUX, SCORE_AUX,
                MASK_MOD, SCORE_MOD, SCORE_GRAD, MASK_HAS_AUX, SCORE_HAS_AUX, IEEE,
            )  # fmt: skip
            p = tl.exp(s - lse[:, None])  # (M, N)
            if IEEE:
                dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision="ieee")
                dp = tl.dot(do, tl.trans(v), input_precision="ieee")
            else:
                dv += tl.dot(tl.trans(p.to(do.dtype)), do)
                dp = tl.dot(do, tl.trans(v))
            ds = p * (dp - delta[:, None]) * grad
            if IEEE:
                dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision="ieee")
            else:
                dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    dk = dk * scale
    tl.store(
        DK + b * sdkb + hk * sdkh + offs_kv[:, None] * sdks + offs_d[None, :] * sdkd,
        dk.to(DK.dtype.element_ty),
        mask=col_ok[:, None] & d_ok,
    )
    tl.store(
        DV_ + b * sdvb + hk * sdvh + offs_kv[:, None] * sdvs + offs_dv[None, :] * sdvd,
        dv.to(DV_.dtype.element_ty),
        mask=col_ok[:, None] & dv_ok,
    )


def _q_side(bm: BlockMask, device) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """The BlockMask's q-side lists, transposed from the kv side when it has none."""
    q_num, q_idx = bm.q_num_blocks, bm.q_indices
    if q_num is None:
        q_num, q_idx = _transpose_ordered(bm.kv_num_blocks, bm.kv_indices)
    fq_num, fq_idx = bm.full_q_num_blocks, bm.full_q_indices
    if bm.full_kv_num_blocks is not None and fq_num is None:
        fq_num, fq_idx = _transpose_ordered(bm.full_kv_num_blocks, bm.full_kv_indices)
    move = [None if x is None else x.to(device) for x in (q_num, q_idx, fq_num, fq_idx)]
    return move[0], move[1], move[2], move[3]


def triton_flex_backward(ctx_args: dict, dout: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """dq, dk, dv of the Triton forward, from its saved tensors and launch arguments."""
    from minirepro.papers.flexattn.triton_kernel import _strides

    q, k, v, out, lse = ctx_args["tensors"]
    bm: BlockMask = ctx_args["block_mask"]
    B, H, S, D = q.shape
    Hkv, T, Dv = k.shape[1], k.shape[2], v.shape[-1]
    qb, kb = bm.BLOCK_SIZE
    n_q, n_kv = -(-S // qb), -(-T // kb)
    dout = dout.contiguous()
    delta = (dout.float() * out.float()).sum(-1).contiguous()  # (B, H, S)
    lse = lse.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    mask_aux, score_aux = ctx_args["mask_aux"], ctx_args["score_aux"]
    dummy = torch.empty(1, dtype=torch.int32, device=q.device)
    common = dict(
        D=D,
        DV=Dv,
        BLOCK_D=max(16, triton.next_power_of_2(D)),
        BLOCK_DV=max(16, triton.next_power_of_2(Dv)),
        BLOCK_M=qb,
        BLOCK_N=kb,
        MASK_MOD=ctx_args["mask_fn"],
        SCORE_MOD=ctx_args["score_fn"],
        SCORE_GRAD=ctx_args["score_grad"],
        MASK_HAS_AUX=mask_aux is not None,
        SCORE_HAS_AUX=score_aux is not None,
        IEEE=q.dtype == torch.float32,
    )
    aux = (dummy if mask_aux is None else mask_aux, dummy if score_aux is None else score_aux)
    kv_num, kv_idx, full_num, full_idx = ctx_args["kv_lists"]
    has_full = bm.full_kv_num_blocks is not None
    _flex_bwd_dq[(n_q, B * H)](
        q, k, v, dout, lse, delta, dq,
        kv_num, kv_idx, full_num, full_idx, *aux,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *lse.stride(), *dq.stride(),
        *_strides(kv_num, 3), *_strides(kv_idx, 4),
        *_strides(full_num, 3), *_strides(full_idx, 4),
        H, S, T, H // Hkv, ctx_args["scale"], HAS_FULL=has_full, **common,
    )  # fmt: skip
    q_num, q_idx, fq_num, fq_idx = _q_side(bm, q.device)
    if fq_num is None:
        fq_num, fq_idx = q_num, q_idx
    _flex_bwd_dkdv[(n_kv, B * Hkv)](
        q, k, v, dout, lse, delta, dk, dv,
        q_num, q_idx, fq_num, fq_idx, *aux,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *lse.stride(),
        *dk.stride(), *dv.stride(),
        *_strides(q_num, 3), *_strides(q_idx, 4),
        *_strides(fq_num, 3), *_strides(fq_idx, 4),
        Hkv, S, T, H // Hkv, ctx_args["scale"], HAS_FULL=has_full, **common,
    )  # fmt: skip
    return dq, dk, dv


class TritonFlexFunction(torch.autograd.Function):
    """Autograd around the Triton forward; the backward runs the two kernels above."""

    @staticmethod
    def forward(ctx, q, k, v, launch):
        out, lse, ctx_args = launch(q, k, v)
        ctx.args = ctx_args
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        args = dict(ctx.args, tensors=ctx.saved_tensors)
        dq, dk, dv = triton_flex_backward(args, dout)
        return dq, dk, dv, None
