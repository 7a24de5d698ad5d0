"""FlexAttention: a programming model for generating optimized attention kernels.

arXiv 2412.05496 (Dong, Feng, Guessous, Liang, He; PyTorch team, 2024).

Claim: attention variants written as two small functions, `score_mod(score, b, h, q_idx,
kv_idx)` and `mask_mod(b, h, q_idx, kv_idx)`, run as fast as hand-written kernels because
the mask is summarised once per block (a `BlockMask`) and empty blocks are skipped; 5.49x-8x
faster than SDPA on variants SDPA cannot express.

Implemented here, with the reference's names and signatures (`torch.nn.attention.
flex_attention`), so switching is a one-line import change:
- `flex_attention`, `create_block_mask`, `create_mask`, `BlockMask` (partial/full blocks,
  q-side indices, `sparsity`, `to_dense`, `to_string`), `and_masks`, `or_masks`, `noop_mask`;
- variants: `make_causal`, `make_sliding_window`, `make_prefix_lm`, `make_document`,
  `make_alibi`, `make_softcap` (and `parse_variant` for names like "sliding_window_64");
- mods evaluated with torch's semantics (functions of scalars, vmapped; mods.py);
  `BlockMask[b, h]` indexing;
- a CPU kernel that computes only the listed blocks, forward *and backward* (the reference
  has no CPU backward), GQA, any lengths, fully masked rows -> 0: one planner (plan.py)
  with two strategies, fused flash calls on views (calls.py) and key-block steps with an
  online softmax (stream.py, every score_mod; memory O(S x block));
- paged attention that never reads a page its sequence does not own (paged.py);
- `ModelConfig(attention="flex", mask="sliding_window_64")` for the core decoder;
- Triton forward and backward kernels for the same BlockMask (triton_kernel.py,
  triton_bwd.py; composed mods become one generated jit function), tested under
  `TRITON_INTERPRET=1`; not yet run on a GPU.

Deviations: no compiler — without a score_mod the CPU kernel covers the listed blocks with
a few large calls of PyTorch's fused flash kernel on views of q, k, v (causal squares,
bands, diagonal runs, rectangles), with a score_mod a vectorised key-block loop; see
NOTES.md.

Run: `minirepro run flexattn` (quick preset); benchmark: `python benchmarks/flexattn.py`.
"""

from minirepro.papers.flexattn.api import flex_attention
from minirepro.papers.flexattn.attention import register as _register
from minirepro.papers.flexattn.block_mask import BlockMask, create_block_mask, create_mask
from minirepro.papers.flexattn.masks import (
    and_masks,
    make_alibi,
    make_causal,
    make_document,
    make_prefix_lm,
    make_sliding_window,
    make_softcap,
    noop_mask,
    or_masks,
    parse_variant,
)
from minirepro.papers.flexattn.paged import PagedAttention
from minirepro.papers.flexattn.repro import CLAIMS, PRESETS, Config, run
from minirepro.registry import Paper

_register()

PAPER = Paper(
    id="flexattn",
    title="FlexAttention: a programming model for generating optimized attention kernels",
    arxiv="2412.05496",
    claims=CLAIMS,
    config=Config,
    presets=PRESETS,
    run=run,
    status="partial",  # Triton never run on a GPU (NOTES.md)
)

__all__ = [
    "PAPER",
    "BlockMask",
    "Config",
    "PagedAttention",
    "and_masks",
    "create_block_mask",
    "create_mask",
    "flex_attention",
    "make_alibi",
    "make_causal",
    "make_document",
    "make_prefix_lm",
    "make_sliding_window",
    "make_softcap",
    "noop_mask",
    "or_masks",
    "parse_variant",
]
