"""FlexAttention as the core decoder's attention function: `ModelConfig(attention="flex")`.

`cfg.mask` names the variant ("causal", "sliding_window_64", "prefix_lm_32",
"document_64", "causal+softcap_30", ...; see `masks.parse_variant`). The BlockMask of a
(query length, key length, offset) is built once and shared by every layer; decoding with
a KV cache (q_start > 0) shifts the query positions of the mask_mod.
"""

from __future__ import annotations

from torch import Tensor

from minirepro.core.model import AttentionFn, ModelConfig, register_attention
from minirepro.papers.flexattn.api import flex_attention
from minirepro.papers.flexattn.block_mask import BlockMask, create_block_mask
from minirepro.papers.flexattn.masks import ScoreMod, offset_mask, offset_score, parse_variant
from minirepro.papers.flexattn.reference import dense_flex_attention

# Block size for model use: the sequences of small models are short, so 128-token blocks
# would leave nothing to skip; `mixer_kwargs={"flex_block_size": n}` overrides it.
DEFAULT_MODEL_BLOCK = 64


def flex_factory(cfg: ModelConfig) -> AttentionFn:
    """`mixer_kwargs`: "flex_block_size" (default 64), "flex_kernel_options" (passed to
    `flex_attention`, e.g. {"backend": "triton"})."""
    mask_mod, score_mod = parse_variant(cfg.mask, n_head=cfg.n_head)
    block = int(cfg.mixer_kwargs.get("flex_block_size", DEFAULT_MODEL_BLOCK))
    options = cfg.mixer_kwargs.get("flex_kernel_options")
    # (S, T, q_start) -> BlockMask and score_mod, one pair shared by every layer (the same
    # objects each step: a kernel compiled for them is reused).
    cache: dict[tuple[int, int, int], tuple[BlockMask, ScoreMod | None]] = {}

    def flex(q: Tensor, k: Tensor, v: Tensor, *, q_start: int) -> Tensor:
        S, T = q.shape[2], k.shape[2]
        key = (S, T, q_start)
        if key not in cache:
            if len(cache) > 8:  # decoding makes one per step; keep the recent few
                cache.pop(next(iter(cache)))
            bm = create_block_mask(
                offset_mask(mask_mod, q_start), None, None, S, T, device=q.device, BLOCK_SIZE=block
            )
            cache[key] = (bm, offset_score(score_mod, q_start))
        bm, sm = cache[key]
        return flex_attention(
            q, k, v, sm, bm, enable_gqa=q.shape[1] != k.shape[1], kernel_options=options
        )

    return flex


def dense_factory(cfg: ModelConfig) -> AttentionFn:
    """The same variant through the dense oracle (`reference.py`): an S x T masked softmax."""
    mask_mod, score_mod = parse_variant(cfg.mask, n_head=cfg.n_head)

    def flex_dense(q: Tensor, k: Tensor, v: Tensor, *, q_start: int) -> Tensor:
        out, _ = dense_flex_attention(
            q, k, v, offset_score(score_mod, q_start), offset_mask(mask_mod, q_start)
        )
        return out

    return flex_dense


def register() -> None:
    """Registers "flex" (block-sparse) and "flex_dense" (dense oracle) attention."""
    register_attention("flex", flex_factory)
    register_attention("flex_dense", dense_factory)
