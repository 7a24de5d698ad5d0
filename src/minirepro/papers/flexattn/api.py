"""`flex_attention`: checks the inputs and runs the kernel that fits them.

- CPU: the plan of `plan.py` (built once per BlockMask and shape): without a score_mod
  the "calls" strategy (a few fused flash calls on views, `calls.py`) when the mask allows
  it in few calls, else the "stream" strategy (key blocks one step at a time with an
  online softmax, `stream.py`), which also runs every score_mod. Forward and backward.
- CUDA tensors, or `kernel_options={"backend": "triton"}`: the Triton kernels
  (`triton_kernel.py`, `triton_bwd.py`). On CUDA a mod the Triton kernel cannot compile
  falls back to the stream strategy (torch ops, any device) with a warning.
"""

from __future__ import annotations

import math
import warnings

from torch import Tensor

from minirepro.core.precision import fp32_kernel
from minirepro.papers.flexattn.block_mask import BlockMask, create_block_mask
from minirepro.papers.flexattn.calls import FlexCalls
from minirepro.papers.flexattn.masks import ScoreMod, noop_mask
from minirepro.papers.flexattn.plan import get_plan
from minirepro.papers.flexattn.stream import StreamAttention, captured_leaves

__all__ = ["flex_attention"]

_PLANS = (None, "calls", "stream")


def _check_mask(bm: BlockMask, B: int, H: int, S: int, T: int) -> None:
    """ValueError unless `bm` broadcasts to (B, H) and covers S queries and T keys."""
    if bm.kv_num_blocks.dim() != 3:
        raise ValueError(
            f"BlockMask must have (batch, head, q block) lists, got kv_num_blocks of shape "
            f"{tuple(bm.kv_num_blocks.shape)}"
        )
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


@fp32_kernel  # CPU plans compute in fp32: under bf16 autocast the inputs are cast to fp32
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
        kernel_options: {"backend": "triton"} forces the Triton kernel (GPU, or
            TRITON_INTERPRET=1); {"plan": "calls" | "stream"} forces a CPU strategy
            (`plan.py`); other keys are accepted for compatibility and ignored.

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
    options = kernel_options or {}
    if options.get("plan") not in _PLANS:
        raise ValueError(
            f"kernel_options['plan'] must be 'calls' or 'stream', got {options['plan']!r}"
        )
    if query.is_cuda or options.get("backend") == "triton":
        result = _triton(query, key, value, score_mod, block_mask, scale, options)
        if result is not None:
            return result if return_lse else result[0]
    _check_mask(block_mask, B, H, S, T)
    group = H // Hkv
    ke, ve = _expand_kv(key, group), _expand_kv(value, group)
    strategy = options.get("plan")
    if strategy == "calls" and (score_mod is not None or query.is_cuda):
        raise ValueError("the 'calls' plan runs on CPU tensors without a score_mod only")
    plan = None
    if score_mod is None and strategy != "stream" and not query.is_cuda:
        plan = get_plan(block_mask, B, H, S, T, "calls")
        if plan is None and strategy == "calls":
            raise ValueError("this BlockMask needs too many fused calls for the 'calls' plan")
    if plan is not None:
        out, lse = FlexCalls.apply(query, ke, ve, plan, scale)
    else:
        plan = get_plan(block_mask, B, H, S, T, "stream")
        leaves = captured_leaves(score_mod)
        out, lse = StreamAttention.apply(query, ke, ve, plan, scale, score_mod, *leaves)
    return (out, lse) if return_lse else out


def _triton(query, key, value, score_mod, block_mask, scale, options):
    """(out, lse) from the Triton kernel, or None on CUDA when it cannot compile the mods
    (the caller falls back to the stream strategy). An explicit backend="triton" raises."""
    from minirepro.papers.flexattn.triton_kernel import UnsupportedMod, triton_flex_attention

    try:
        return triton_flex_attention(query, key, value, score_mod, block_mask, scale)
    except (UnsupportedMod, NotImplementedError) as e:  # a mod it cannot compile/differentiate
        if options.get("backend") == "triton":
            raise
        warnings.warn(f"{e} -- running the torch stream strategy instead", stacklevel=3)
        return None
