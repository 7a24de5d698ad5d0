"""FlexAttention in Triton, for the same BlockMask as the CPU kernel: the forward here.

One program per (query block, batch·head). It walks the query block's *full* key blocks
(`full_kv_indices`, no mask_mod) and then its *partial* ones (`kv_indices`, mask_mod on the
tile), with an fp32 online softmax, and writes out (B, H, S, Dv) and the natural-log LSE
(B, H, S) fp32, as the CPU path does. Rows with no allowed key give out = 0, lse = -inf.
GQA reads kv head h // group; lengths need not be multiples of the block (bounds masks).

score_mod / mask_mod enter the kernel as `tl.constexpr` functions wrapped by `triton.jit`
and are called on the tile's index tensors: b, h scalars, q_idx (BLOCK_M, 1), kv_idx
(1, BLOCK_N), clamped into the sequence as on the CPU. Which user functions work:

- pure index arithmetic, comparisons, `&`/`|`, captured Python ints/floats/bools (they
  become constexprs): causal, sliding window, prefix LM, `document_<len>`, per-head masks;
- the library's tensor-capturing mods, translated here: `make_document` (its doc ids are
  loaded from a pointer), `make_alibi` (slopes loaded per head), `make_softcap` (tanh);
- anything else (torch calls, other captured tensors, lambdas, and_masks/or_masks) raises
  a ValueError naming what is supported.

The backward (dq, dk, dv) is in `triton_bwd.py`; a call that needs gradients goes through
`triton_bwd.TritonFlexFunction`.
"""

from __future__ import annotations

import inspect
import linecache
import types
import weakref
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from minirepro.papers.flexattn.block_mask import BlockMask
from minirepro.papers.flexattn.masks import (
    and_masks,
    compose_score_mods,
    make_alibi,
    make_document,
    make_softcap,
    noop_mask,
    offset_mask,
    offset_score,
    or_masks,
)

__all__ = ["UnsupportedMod", "triton_flex_attention"]

SUPPORTED = (
    "pure index arithmetic/comparisons with captured Python scalars (causal, sliding window, "
    "prefix LM, document_<len>, per-head), noop_mask, make_document, make_alibi, make_softcap, "
    "and and_masks / or_masks / offset_mask / composed score_mods of these (at most one part "
    "capturing a tensor)"
)


# --------------------------------------------------------------------------- library mods


@triton.jit
def _document_causal(b, h, q_idx, kv_idx, doc_id):
    same = tl.load(doc_id + q_idx) == tl.load(doc_id + kv_idx)
    return same & (q_idx >= kv_idx)


@triton.jit
def _document_bidir(b, h, q_idx, kv_idx, doc_id):
    return tl.load(doc_id + q_idx) == tl.load(doc_id + kv_idx)


@triton.jit
def _alibi(score, b, h, q_idx, kv_idx, slopes):
    return score + tl.load(slopes + h) * (kv_idx - q_idx).to(tl.float32)


@triton.jit
def _softcap(score, b, h, q_idx, kv_idx, cap):
    x = score / cap
    t = tl.exp(-2.0 * tl.abs(x))  # tanh(|x|) = (1 - t) / (1 + t), no overflow
    th = (1.0 - t) / (1.0 + t)
    return cap * tl.where(x < 0, -th, th)


@triton.jit
def _always(b, h, q_idx, kv_idx):
    return (q_idx >= 0) | (kv_idx >= 0)


_DOC_CODE = make_document([0, 1]).__code__
_ALIBI_CODE = make_alibi(1).__code__
_SOFTCAP_CODE = make_softcap(1.0).__code__

# user function -> (jitted function, aux argument or None); weak so masks can be freed
_JITTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class UnsupportedMod(ValueError):
    """A mask_mod / score_mod (or block size) the Triton kernel cannot compile."""


def _closure(fn) -> dict[str, Any]:
    if fn.__closure__ is None:
        return {}
    return {n: c.cell_contents for n, c in zip(fn.__code__.co_freevars, fn.__closure__)}


def _jit_user_fn(fn, kind: str):
    """`triton.jit` of a copy of `fn` whose captured scalars are constexprs."""
    name = getattr(fn, "__name__", repr(fn))
    if not isinstance(fn, types.FunctionType) or fn.__name__ == "<lambda>":
        raise UnsupportedMod(
            f"{kind} {name!r} cannot run in the Triton kernel: only `def` functions can be "
            f"traced by triton.jit. Supported: {SUPPORTED}"
        )
    cells, consts = [], {}
    for var, val in _closure(fn).items():
        if isinstance(val, bool | int | float):
            val = tl.constexpr(val)
        elif not isinstance(val, tl.constexpr):
            raise UnsupportedMod(
                f"{kind} {name!r} captures {var!r} ({type(val).__name__}); the Triton kernel "
                f"supports captured Python scalars only (and the library's tensor-capturing "
                f"mods). Supported: {SUPPORTED}"
            )
        cells.append(types.CellType(val))
        consts[var] = val
    if "torch" in fn.__code__.co_names:
        raise UnsupportedMod(
            f"{kind} {name!r} calls torch, which Triton cannot trace; use arithmetic, "
            f"comparisons, & and |. Supported: {SUPPORTED}"
        )
    # The interpreter re-executes the source in the function's globals (closures are lost
    # there), and wants triton.language among them: captured scalars become constexpr
    # globals of a private copy, which the compiler also accepts and hashes.
    env = {**fn.__globals__, "_triton_language": tl, **consts}
    copy = types.FunctionType(
        fn.__code__, env, fn.__code__.co_name, fn.__defaults__, tuple(cells) or None
    )
    try:
        inspect.getsource(copy)
        return triton.jit(copy)
    except (OSError, TypeError) as e:
        raise UnsupportedMod(f"{kind} {name!r} has no source for triton.jit: {e}") from e


def _translate(fn, kind: str, device, n_pos: int, n_head: int) -> tuple[Any, Any]:
    """(jitted fn, aux) for the kernel: aux is a tensor/float passed as the last argument."""
    code = getattr(fn, "__code__", None)
    if fn is noop_mask:
        return _always, None
    if fn in _JITTED:
        jitted, aux = _JITTED[fn]
    else:
        env = _closure(fn) if isinstance(fn, types.FunctionType) else {}
        if code is _DOC_CODE:
            jitted = _document_causal if env["causal"] else _document_bidir
            aux = env["doc_id"].to(torch.int32)
        elif code is _ALIBI_CODE:
            jitted, aux = _alibi, env["slopes"].to(torch.float32)
        elif code is _SOFTCAP_CODE:
            jitted, aux = _softcap, float(env["cap"])
        elif composition(fn) is not None:
            parts = [_translate(p, kind, "cpu", 0, 0) for p in composition(fn)[1]]
            jitted, aux = _compose(fn, parts), next((a for _, a in parts if a is not None), None)
        else:
            jitted, aux = _jit_user_fn(fn, kind), None
        _JITTED[fn] = (jitted, aux)
    _check_sizes(fn, n_pos, n_head)
    if isinstance(aux, Tensor):
        aux = aux.to(device)
    return jitted, aux


def _check_sizes(fn, n_pos: int, n_head: int) -> None:
    """ValueError where a library mod (composed or not) is too small for the inputs."""
    if composition(fn) is not None:
        for part in composition(fn)[1]:
            _check_sizes(part, n_pos, n_head)
        return
    code = getattr(fn, "__code__", None)
    if code is _DOC_CODE and (n := _closure(fn)["doc_id"].numel()) < n_pos:
        raise ValueError(f"make_document covers {n} positions, inputs need {n_pos}")
    if code is _ALIBI_CODE and (n := _closure(fn)["slopes"].numel()) < n_head:
        raise ValueError(f"make_alibi({n}) has too few slopes for {n_head} heads")


# --------------------------------------------------------------------------- composition

_AND_CODE = and_masks(noop_mask).__code__
_OR_CODE = or_masks(noop_mask).__code__
_OFFSET_MASK_CODE = offset_mask(noop_mask, 1).__code__
_OFFSET_SCORE_CODE = offset_score(make_softcap(1.0), 1).__code__
_CHAIN_CODE = compose_score_mods(make_softcap(1.0), make_softcap(2.0)).__code__
_COMPOSED: dict[int, int] = {}  # generated function count, for unique names


def composition(fn) -> tuple[str, list, int] | None:
    """(how, parts, offset) if fn is one of the library's compositions, else None."""
    code = getattr(fn, "__code__", None)
    if not isinstance(fn, types.FunctionType):
        return None
    env = _closure(fn)
    if code is _AND_CODE or code is _OR_CODE:
        return ("&" if code is _AND_CODE else "|", list(env["mask_mods"]), 0)
    if code is _OFFSET_MASK_CODE:
        return ("offset", [env["mask_mod"]], int(env["q_offset"]))
    if code is _OFFSET_SCORE_CODE:
        return ("offset", [env["score_mod"]], int(env["q_offset"]))
    if code is _CHAIN_CODE:
        return ("chain", list(env["mods"]), 0)
    return None


def _compose(fn, parts: list[tuple[Any, Any]], grads: list | None = None):
    """One generated `triton.jit` function calling the parts' jitted functions.

    Args:
        fn: The composed mod (`composition(fn)` is not None).
        parts: (jitted, aux) per part; at most one part may take an aux argument.
        grads: For the derivative of a score_mod chain: each part's jitted derivative
            (None: 1). Then the result is d fn / d score by the chain rule.
    """
    how, _, offset = composition(fn)
    with_aux = [i for i, (_, a) in enumerate(parts) if a is not None]
    if len(with_aux) > 1:
        raise UnsupportedMod(
            f"{getattr(fn, '__name__', fn)!r} composes {len(with_aux)} mods that capture "
            f"tensors; the Triton kernel passes one. Supported: {SUPPORTED}"
        )
    is_score = how == "chain" or fn.__code__ is _OFFSET_SCORE_CODE
    idx = "b, h, q_idx + OFFSET, kv_idx" if how == "offset" else "b, h, q_idx, kv_idx"
    aux = ", aux" if with_aux else ""

    def call(i, first="score"):
        tail = aux if i in with_aux else ""
        return f"p{i}({first + ', ' if is_score else ''}{idx}{tail})"

    if how in ("&", "|"):
        body = f"    return {f' {how} '.join(call(i) for i in range(len(parts)))}\n"
    elif how == "offset" and grads is None:
        body = f"    return {call(0)}\n"
    elif grads is None:  # chain
        body = "".join(f"    score = {call(i)}\n" for i in range(len(parts))) + "    return score\n"
    else:  # the chain rule through the parts, derivative 1 where grads[i] is None
        body, terms = "    s0 = score\n", []
        for i, g in enumerate(grads):
            if g is not None:
                terms.append(call(i, f"s{i}").replace(f"p{i}(", f"g{i}("))
            body += f"    s{i + 1} = {call(i, f's{i}')}\n"
        body += f"    return {' * '.join(terms) if terms else '1.0'}\n"
    n = _COMPOSED[0] = _COMPOSED.get(0, 0) + 1
    name = f"_flex_composed_{n}"
    args = ("score, " if is_score else "") + "b, h, q_idx, kv_idx" + aux
    src = f"def {name}({args}):\n{body}"
    filename = f"<flexattn {name}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    env = {"tl": tl, "OFFSET": tl.constexpr(offset)}
    env.update({f"p{i}": jitted for i, (jitted, _) in enumerate(parts)})
    env.update({f"g{i}": g for i, g in enumerate(grads or []) if g is not None})
    exec(compile(src, filename, "exec"), env)  # noqa: S102 -- source generated above
    return triton.jit(env[name])


# --------------------------------------------------------------------------- kernel


@triton.jit
def _flex_fwd(
    Q, K, V, Out, LSE,
    KV_NUM, KV_IDX, FULL_NUM, FULL_IDX,
    MASK_AUX, SCORE_AUX,
    sqb, sqh, sqs, sqd,
    skb, skh, sks, skd,
    svb, svh, svs, svd,
    sob, soh, sos, sod,
    slb, slh, sls,
    snb, snh, snq,
    sib, sih, siq, sik,
    sfnb, sfnh, sfnq,
    sfib, sfih, sfiq, sfik,
    H, S, T, GROUP, scale,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MASK_MOD: tl.constexpr, SCORE_MOD: tl.constexpr, HAS_FULL: tl.constexpr,
    MASK_HAS_AUX: tl.constexpr, SCORE_HAS_AUX: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    qblk = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // GROUP

    offs_m = qblk * BLOCK_M + tl.arange(0, BLOCK_M)  # (M,)
    offs_n = tl.arange(0, BLOCK_N)  # (N,)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < S
    q_idx = tl.minimum(offs_m, S - 1)[:, None]  # (M, 1), clamped as on the CPU

    q_ptrs = Q + b * sqb + h * sqh + offs_m[:, None] * sqs + offs_d[None, :] * sqd
    q = tl.load(q_ptrs, mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)

    n_full = 0
    if HAS_FULL:
        n_full = tl.load(FULL_NUM + b * sfnb + h * sfnh + qblk * sfnq)
    n_part = tl.load(KV_NUM + b * snb + h * snh + qblk * snq)
    # Full blocks first (no mask_mod), then partial ones (mask_mod on the tile).
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
            k_base + offs_kv[None, :] * sks + offs_d[:, None] * skd,
            mask=col_ok[None, :] & (offs_d[:, None] < D),
            other=0.0,
        )  # (D, N)
        if IEEE:
            s = tl.dot(q, k, input_precision="ieee")
        else:
            s = tl.dot(q, k)
        s = s * scale  # (M, N) fp32
        if SCORE_MOD is not None:
            if SCORE_HAS_AUX:
                s = SCORE_MOD(s, b, h, q_idx, kv_idx, SCORE_AUX)
            else:
                s = SCORE_MOD(s, b, h, q_idx, kv_idx)
        keep = col_ok[None, :] & (q_idx >= 0)  # (M, N)
        if MASK_MOD is not None:
            if not is_full:
                if MASK_HAS_AUX:
                    keep = keep & MASK_MOD(b, h, q_idx, kv_idx, MASK_AUX)
                else:
                    keep = keep & MASK_MOD(b, h, q_idx, kv_idx)
        s = tl.where(keep, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: no NaN
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            v_base + offs_kv[:, None] * svs + offs_dv[None, :] * svd,
            mask=col_ok[:, None] & (offs_dv[None, :] < DV),
            other=0.0,
        )  # (N, Dv)
        if IEEE:
            pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    dead = l_i == 0.0
    out = acc / tl.where(dead, 1.0, l_i)[:, None]
    lse = tl.where(dead, float("-inf"), m_i + tl.log(tl.where(dead, 1.0, l_i)))
    o_ptrs = Out + b * sob + h * soh + offs_m[:, None] * sos + offs_dv[None, :] * sod
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & (offs_dv[None, :] < DV))
    tl.store(LSE + b * slb + h * slh + offs_m * sls, lse, mask=row_ok)


# --------------------------------------------------------------------------- entry


def _strides(x: Tensor, n: int) -> tuple[int, ...]:
    """x's strides, 0 along size-1 (broadcast) dims."""
    return tuple(0 if x.shape[i] == 1 else x.stride(i) for i in range(n))


def triton_flex_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    score_mod,
    block_mask: BlockMask,
    scale: float,
    return_lse: bool = True,
) -> tuple[Tensor, Tensor]:
    """Block-sparse attention in Triton (GPU, or CPU under TRITON_INTERPRET=1).

    Differentiable w.r.t. query, key and value (the backward is `triton_bwd.py`) when the
    score_mod's derivative is known to the kernel (none, ALiBi, soft-capping, or a
    declared `score_grad`).

    Args:
        query: (B, H, S, D). key: (B, H_kv, T, D), value: (B, H_kv, T, Dv); H a multiple
            of H_kv; key/value batch already expanded to B by the caller.
        score_mod: `score_mod(score, b, h, q_idx, kv_idx)` or None; see module docstring.
        block_mask: Its BLOCK_SIZE must be powers of two >= 16 (tl.dot's minimum).
        scale: Score scale.
        return_lse: Ignored (the LSE is always computed); kept for the caller's signature.

    Returns:
        out (B, H, S, Dv) in query's dtype and lse (B, H, S) fp32, natural log.

    Raises:
        NotImplementedError: gradients are required through a score_mod whose derivative
            the kernel does not know.
        ValueError: unsupported mask_mod/score_mod, block size or mask shape.
    """
    from minirepro.papers.flexattn.triton_bwd import TritonFlexFunction, score_mod_grad

    B, H, S, D = query.shape
    Hkv, T, Dv = key.shape[1], key.shape[2], value.shape[-1]
    qb, kb = block_mask.BLOCK_SIZE
    for size in (qb, kb):
        if size < 16 or size & (size - 1):
            raise UnsupportedMod(
                f"Triton kernel needs power-of-2 block sizes >= 16, got {(qb, kb)}"
            )
    mB, mH = block_mask.kv_num_blocks.shape[:2]
    if mB not in (1, B) or mH not in (1, H):
        raise ValueError(f"BlockMask batch/head dims {(mB, mH)} do not broadcast to {(B, H)}")
    n_q, n_kv = -(-S // qb), -(-T // kb)
    if block_mask.kv_indices.shape[-2] < n_q or block_mask.kv_indices.shape[-1] < n_kv:
        raise ValueError(
            f"BlockMask covers seq_lengths {block_mask.seq_lengths}, inputs have "
            f"Q_LEN={S}, KV_LEN={T}"
        )
    device = query.device
    mask_fn = mask_aux = score_fn = score_aux = None
    if block_mask.mask_mod is not noop_mask:
        mask_fn, mask_aux = _translate(block_mask.mask_mod, "mask_mod", device, max(S, T), H)
    if score_mod is not None:
        score_fn, score_aux = _translate(score_mod, "score_mod", device, max(S, T), H)
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (query, key, value))
    score_grad = score_mod_grad(score_mod, score_fn) if needs_grad else None

    kv_num = block_mask.kv_num_blocks.to(device)
    kv_idx = block_mask.kv_indices.to(device)
    has_full = block_mask.full_kv_num_blocks is not None
    full_num = block_mask.full_kv_num_blocks.to(device) if has_full else kv_num
    full_idx = block_mask.full_kv_indices.to(device) if has_full else kv_idx

    def launch(query, key, value):
        out = torch.empty(B, H, S, Dv, dtype=query.dtype, device=device)
        lse = torch.empty(B, H, S, dtype=torch.float32, device=device)
        dummy = torch.empty(1, dtype=torch.int32, device=device)
        _flex_fwd[(n_q, B * H)](
            query, key, value, out, lse,
            kv_num, kv_idx, full_num, full_idx,
            dummy if mask_aux is None else mask_aux,
            dummy if score_aux is None else score_aux,
            *query.stride(), *key.stride(), *value.stride(), *out.stride(), *lse.stride(),
            *_strides(kv_num, 3), *_strides(kv_idx, 4),
            *_strides(full_num, 3), *_strides(full_idx, 4),
            H, S, T, H // Hkv, scale,
            D=D, DV=Dv,
            BLOCK_D=max(16, triton.next_power_of_2(D)),
            BLOCK_DV=max(16, triton.next_power_of_2(Dv)),
            BLOCK_M=qb, BLOCK_N=kb,
            MASK_MOD=mask_fn, SCORE_MOD=score_fn, HAS_FULL=has_full,
            MASK_HAS_AUX=mask_aux is not None, SCORE_HAS_AUX=score_aux is not None,
            IEEE=query.dtype == torch.float32,
        )  # fmt: skip
        args = dict(
            block_mask=block_mask,
            kv_lists=(kv_num, kv_idx, full_num, full_idx),
            mask_fn=mask_fn,
            mask_aux=mask_aux,
            score_fn=score_fn,
            score_aux=score_aux,
            score_grad=score_grad,
            scale=scale,
        )
        return out, lse, args

    if not needs_grad:
        out, lse, _ = launch(query, key, value)
        return out, lse
    return TritonFlexFunction.apply(query, key, value, launch)
