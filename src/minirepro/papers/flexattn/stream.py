"""The "stream" strategy (see `plan.py`): key blocks one step at a time, online softmax.

Each bucket's query blocks (r of them, all batches/heads of the group) walk their listed
key blocks together, one block per step: scores (r, B', H', qb, kb) by one batched matmul,
score_mod (torch's semantics, `mods.score_values`), the step's boolean tiles as the mask,
and an fp32 online softmax (running max, sum and output, FlashAttention's recurrence).
Memory per step is O(S x block); nothing the size of the listed area is ever built. bf16 /
fp16 inputs are computed in fp32 and the output cast back.

The backward recomputes each step's probabilities from the saved LSE (FlashAttention-2):
dS = P ⊙ (dP - rowsum(dO ⊙ O)), through the score_mod by autograd on the recomputed step,
which also yields the gradients of tensors the score_mod captures (found once by probing
the score_mod's autograd graph, `captured_leaves`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from minirepro.papers.flexattn.calls import pad_rows
from minirepro.papers.flexattn.mods import score_values
from minirepro.papers.flexattn.plan import Bucket, Group, Plan

__all__ = ["StreamAttention", "captured_leaves"]

_NEG_INF = float("-inf")


def captured_leaves(score_mod) -> list[Tensor]:
    """Leaf tensors requiring grad that `score_mod` reads (a learned bias), in graph order.

    Found by calling it once on scalars and walking the autograd graph of the result.
    """
    if score_mod is None or not torch.is_grad_enabled():
        return []
    i = torch.zeros((), dtype=torch.long)
    try:
        with torch.enable_grad():
            out = score_mod(torch.zeros(()), i, i, i, i)
    except Exception as e:
        name = getattr(score_mod, "__name__", repr(score_mod))
        raise ValueError(
            f"score_mod {name!r} failed on scalar indices (torch calls it per element, "
            f"through vmap): {e!r}"
        ) from e
    if not isinstance(out, Tensor) or out.grad_fn is None:
        return []
    leaves, seen, stack = [], set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)
        if var is not None:
            leaves.append(var)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return leaves


class _Blocks:
    """Inputs as (B, H, blocks, size, D), zero-padded; gathers per bucket and step."""

    def __init__(self, x: Tensor, n: int, size: int) -> None:
        self.x = pad_rows(x, n * size).view(*x.shape[:2], n, size, x.shape[-1])

    def take(self, g: Group, blocks: Tensor) -> Tensor:
        """(r, B', H', size, D) fp32 for blocks (r,), or (r, B', H', c·size, D) for (r, c):
        the blocks of every batch/head of the group."""
        x = self.x[g.b, g.h][:, :, blocks].movedim(2, 0)  # (r, B', H', [c,] size, D)
        return (x.flatten(3, 4) if blocks.dim() == 2 else x).float()


def _positions(blocks: Tensor, size: int, limit: int) -> Tensor:
    """(r,) blocks -> (r, size) positions, (r, c) -> (r, c·size); clamped into the sequence."""
    pos = blocks[..., None] * size + torch.arange(size, device=blocks.device)
    return (pos.flatten(-2) if blocks.dim() == 2 else pos).clamp(max=limit - 1)


def _step_scores(ctx, g, bk, cols, Qs, Kj, q_pos, score_mod, blocked, enable_grad=False):
    """Scores of the step's key blocks `cols` (r, B', H', qb, c·kb) after score_mod and the
    mask (in place, -inf); with the leaf of the raw scores when the backward differentiates
    through the score_mod.

    Qs: the bucket's queries times the scale. blocked: the group's tiles negated.
    """
    s = Qs @ Kj.transpose(-1, -2)
    leaf = None
    if score_mod is not None:
        if enable_grad:
            leaf = s.requires_grad_()
        kv_pos = _positions(bk.blocks[:, cols], ctx.kb, ctx.T)[:, None, None, None, :]
        with torch.set_grad_enabled(enable_grad):
            s = score_values(score_mod, s, ctx.b5[g], ctx.h5[g], q_pos, kv_pos)
    mask = None
    if any(bk.masked[cols]):
        ids = bk.tile_ids[:, cols]  # (r, c)
        if bool((ids == ids[0, 0]).all()):  # one pattern for every row: broadcast it
            ids = ids[:1]
        # (r | 1, c, B'', H'', qb, kb) -> (r | 1, B'', H'', qb, c·kb)
        mask = blocked[ids].permute(0, 2, 3, 4, 1, 5).flatten(4)
        if leaf is None:
            s = s.masked_fill_(mask, _NEG_INF)
    return s, leaf, mask


def _on(bk: Bucket, device) -> Bucket:
    """The bucket with its index tensors on `device` (plans are built on the CPU)."""
    if bk.rows.device == torch.device(device):
        return bk
    return Bucket(
        bk.rows.to(device), bk.blocks.to(device), bk.tile_ids.to(device), bk.masked, bk.chunk
    )


def _steps(bk: Bucket) -> list[slice]:
    """The bucket's steps: `bk.chunk` consecutive key-block columns each."""
    n = bk.blocks.shape[1]
    return [slice(j, min(n, j + bk.chunk)) for j in range(0, n, bk.chunk)]


def _add_blocks(acc: Tensor, blocks: Tensor, grad: Tensor) -> None:
    """acc (n_kv, B', H', kb, D) += grad (r, B', H', c·kb, D) at key blocks (r, c)."""
    r, c = blocks.shape
    kb = acc.shape[3]
    grad = grad.unflatten(3, (c, kb)).movedim(3, 1)  # (r, c, B', H', kb, D)
    acc.index_add_(0, blocks.flatten(), grad.flatten(0, 1))


class _Ctx:
    """What every step needs: scale, sizes and each group's batch/head index tensors."""

    def __init__(self, plan: Plan, scale: float, B: int, H: int, S: int, T: int, device):
        self.scale, self.S, self.T, self.qb, self.kb = scale, S, T, plan.qb, plan.kb
        b, h = torch.arange(B, device=device), torch.arange(H, device=device)
        self.b5 = [b[g.b][None, :, None, None, None] for g in plan.groups]
        self.h5 = [h[g.h][None, None, :, None, None] for g in plan.groups]


def _forward(q, k, v, plan: Plan, scale: float, score_mod):
    B, H, S, _ = q.shape
    T, Dv = k.shape[2], v.shape[-1]
    ctx = _Ctx(plan, scale, B, H, S, T, q.device)
    qs, ks, vs = (
        _Blocks(q, plan.n_q, plan.qb),
        _Blocks(k, plan.n_kv, plan.kb),
        _Blocks(v, plan.n_kv, plan.kb),
    )
    out = q.new_zeros(B, H, plan.n_q, plan.qb, Dv)
    lse = torch.full((B, H, plan.n_q, plan.qb), _NEG_INF, device=q.device)
    for gi, g in enumerate(plan.groups):
        blocked = ~g.tiles.to(q.device)
        for bk in g.buckets:
            bk = _on(bk, q.device)
            Qs = qs.take(g, bk.rows).mul_(scale)  # (r, B', H', qb, D), a fresh gather
            q_pos = _positions(bk.rows, plan.qb, S)[:, None, None, :, None]
            shape = Qs.shape[:-1]
            m = torch.full(shape, _NEG_INF, device=q.device)
            denom = torch.zeros(shape, device=q.device)
            acc = torch.zeros(*shape, Dv, device=q.device)
            for cols in _steps(bk):
                blk = bk.blocks[:, cols]
                s, _, _ = _step_scores(
                    ctx, gi, bk, cols, Qs, ks.take(g, blk), q_pos, score_mod, blocked
                )
                m_new = torch.maximum(m, s.amax(-1))
                m_safe = m_new.masked_fill(torch.isneginf(m_new), 0.0)  # nothing allowed yet
                p = s.sub_(m_safe[..., None]).exp_()
                alpha = m.sub_(m_safe).exp_()  # m = -inf: 0
                denom.mul_(alpha).add_(p.sum(-1))
                acc.mul_(alpha[..., None]).add_(p @ vs.take(g, blk))
                m = m_new
            m = m.masked_fill_(torch.isneginf(m), 0.0)
            o = acc / torch.where(denom == 0, torch.ones_like(denom), denom)[..., None]
            out[g.b, g.h][:, :, bk.rows] = o.movedim(0, 2).to(out.dtype)
            lse[g.b, g.h][:, :, bk.rows] = (m + torch.log(denom)).movedim(0, 2)
    return out.flatten(2, 3)[:, :, :S], lse.flatten(2, 3)[:, :, :S]


class StreamAttention(torch.autograd.Function):
    """Block-sparse attention by key-block steps; differentiable w.r.t. q, k, v and the
    tensors the score_mod captures (`leaves`)."""

    @staticmethod
    def forward(ctx, q, k, v, plan: Plan, scale: float, score_mod, *leaves):
        out, lse = _forward(q, k, v, plan, scale, score_mod)
        ctx.save_for_backward(q, k, v, out, lse, *leaves)
        ctx.plan, ctx.scale, ctx.score_mod = plan, scale, score_mod
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, *leaves = ctx.saved_tensors
        dq, dk, dv, dleaves = _backward(
            q, k, v, out, lse, dout, ctx.plan, ctx.scale, ctx.score_mod, leaves
        )
        return dq, dk, dv, None, None, None, *dleaves


def _backward(q, k, v, out, lse, dout, plan: Plan, scale, score_mod, leaves):
    B, H, S, D = q.shape
    T, Dv = k.shape[2], v.shape[-1]
    dev = q.device
    ctx = _Ctx(plan, scale, B, H, S, T, dev)
    qs, dos = _Blocks(q, plan.n_q, plan.qb), _Blocks(dout, plan.n_q, plan.qb)
    ks, vs = _Blocks(k, plan.n_kv, plan.kb), _Blocks(v, plan.n_kv, plan.kb)
    delta = (dout.float() * out.float()).sum(-1)  # (B, H, S)
    # Rows no key reaches: lse +inf makes every recomputed probability 0.
    lse = lse.masked_fill(torch.isneginf(lse), float("inf"))
    pad = plan.n_q * plan.qb - S
    lse_b = torch.nn.functional.pad(lse, (0, pad), value=float("inf")).view(B, H, plan.n_q, plan.qb)
    delta_b = torch.nn.functional.pad(delta, (0, pad)).view(B, H, plan.n_q, plan.qb)
    dq = torch.zeros(B, H, plan.n_q, plan.qb, D, device=dev)
    dk = torch.zeros(B, H, plan.n_kv * plan.kb, D, device=dev)
    dv = torch.zeros(B, H, plan.n_kv * plan.kb, Dv, device=dev)
    dleaves = [torch.zeros_like(x) for x in leaves]
    for gi, g in enumerate(plan.groups):
        blocked = ~g.tiles.to(dev)
        Bp, Hp = dk[g.b, g.h].shape[:2]
        # Key gradients block-major (n_kv, B', H', kb, D): index_add_ over whole blocks.
        dkb = torch.zeros(plan.n_kv, Bp, Hp, plan.kb, D, device=dev)
        dvb = torch.zeros(plan.n_kv, Bp, Hp, plan.kb, Dv, device=dev)
        for bk in g.buckets:
            bk = _on(bk, dev)
            Qs, dOg = qs.take(g, bk.rows).mul_(scale), dos.take(g, bk.rows)
            lse_g = lse_b[g.b, g.h][:, :, bk.rows].movedim(2, 0)[..., None]
            delta_g = delta_b[g.b, g.h][:, :, bk.rows].movedim(2, 0)[..., None]
            q_pos = _positions(bk.rows, plan.qb, S)[:, None, None, :, None]
            dQg = torch.zeros_like(Qs)
            for cols in _steps(bk):
                blk = bk.blocks[:, cols]
                Kj, Vj = ks.take(g, blk), vs.take(g, blk)
                with_mod = score_mod is not None
                s, leaf, mask = _step_scores(
                    ctx, gi, bk, cols, Qs, Kj, q_pos, score_mod, blocked, enable_grad=with_mod
                )
                if leaf is None:  # masked in place already; s is not needed again
                    p = s.sub_(lse_g).exp_()
                else:
                    p = (s.detach() - lse_g).exp_()
                    if mask is not None:
                        p.masked_fill_(mask, 0.0)
                _add_blocks(dvb, blk, p.transpose(-1, -2) @ dOg)
                ds = p.mul_((dOg @ Vj.transpose(-1, -2)).sub_(delta_g))  # dS, in p's place
                if leaf is not None:
                    grads = torch.autograd.grad(
                        s, (leaf, *leaves), ds, allow_unused=True, retain_graph=bool(leaves)
                    )
                    ds = grads[0]
                    for acc, gl in zip(dleaves, grads[1:]):
                        if gl is not None:
                            acc += gl
                dQg += ds @ Kj
                _add_blocks(dkb, blk, ds.transpose(-1, -2) @ Qs)
            dq[g.b, g.h][:, :, bk.rows] = dQg.mul_(scale).movedim(0, 2)
        dk[g.b, g.h] = dkb.movedim(0, 2).flatten(2, 3)
        dv[g.b, g.h] = dvb.movedim(0, 2).flatten(2, 3)
    dq = dq.flatten(2, 3)[:, :, :S].to(q.dtype)
    return dq, dk[:, :, :T].to(k.dtype), dv[:, :, :T].to(v.dtype), dleaves
