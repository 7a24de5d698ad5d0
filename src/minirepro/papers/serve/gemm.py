"""The runner's projections: y = x @ W.T with W laid out once, at engine start, for the GEMM
that suits the number of rows.

Decoding multiplies a few rows (one per running sequence) by every weight, so each step
streams all the weights from memory; prefill multiplies hundreds. Measured on 2 AMD EPYC
cores, one thread, SmolLM2-135M's matrices, cold weights (`python benchmarks/serve_kernels.py`):

- `F.linear` (MKL sgemm) repacks W on every call: 124 ms a step for 4 rows, 181 ms for 16;
- oneDNN's matmul on weights re-laid out once (`torch.ops.mkldnn`, shipped with torch):
  87 ms and 146 ms, 20-40% faster at every row count from 4 on;
- the packed kernel (csrc/packed_gemm.cpp: 16-column panels, 6 x 16 register tile, next panel
  prefetched): 48 ms for 4 rows (the memory floor: 50 ms at the 10.9 GB/s measured), 114 ms
  for 16 — and no better than oneDNN from ~64 rows on.

So `gemm="auto"` takes the packed kernel up to `SMALL_ROWS` rows and oneDNN above, and falls
back to what builds and runs here: oneDNN alone without a C++ compiler, `F.linear` without
oneDNN. Results differ from `F.linear` by float rounding (~1e-6 relative).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from minirepro.papers.serve.kernels import kernel_available, load_kernel

__all__ = ["GEMMS", "SMALL_ROWS", "Weight", "linear", "pack", "resolve_gemm"]

GEMMS = ("auto", "packed", "onednn", "torch")
SMALL_ROWS = 48  # at most this many rows go to the packed kernel (crossover ~64, measured)


@dataclass
class Weight:
    """One (N, K) weight in the layouts `linear` may read (None where not built)."""

    n: int
    dense: Tensor | None = None  # (N, K): F.linear
    onednn: Tensor | None = None  # oneDNN's blocked layout (an opaque mkldnn tensor)
    panels: Tensor | None = None  # (ceil(N / 16), K, 16): the packed kernel


@functools.cache
def _onednn_works() -> bool:
    if not (
        torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    ):
        return False
    try:  # a private op of torch's: check that it runs here before relying on it
        w = torch.ops.mkldnn._reorder_linear_weight(torch.randn(4, 8), 64)
        return torch.ops.mkldnn._linear_pointwise(
            torch.randn(2, 8), w, None, "none", [], ""
        ).shape == (2, 4)
    except (RuntimeError, AttributeError):
        return False


def resolve_gemm(gemm: str, like: Tensor) -> str:
    """What `gemm` (one of GEMMS) resolves to for weights like `like`.

    "packed": the packed kernel for few rows, oneDNN (or F.linear) for many; "onednn"; "torch".
    """
    if gemm not in GEMMS:
        raise ValueError(f"gemm must be one of {GEMMS}, got {gemm!r}")
    if gemm == "torch":
        return "torch"
    fp32_cpu = like.dtype == torch.float32 and like.device.type == "cpu"
    if gemm == "packed" and not (fp32_cpu and kernel_available()):
        raise ValueError("the packed GEMM kernel needs float32 CPU weights and a C++ compiler")
    if gemm == "onednn" and not (fp32_cpu and _onednn_works()):
        raise ValueError("oneDNN matmul is not available for these weights (float32 CPU only)")
    if gemm == "auto":
        if not fp32_cpu:
            return "torch"
        return "packed" if kernel_available() else "onednn" if _onednn_works() else "torch"
    return gemm


def pack(w: Tensor, gemm: str) -> Weight:
    """w (N, K) laid out for `gemm` (a resolved one: "packed", "onednn" or "torch")."""
    w = w.detach().contiguous()
    out = Weight(n=w.shape[0])
    if gemm == "packed":
        out.panels = load_kernel().pack_weight(w)
    if gemm == "onednn" or (gemm == "packed" and _onednn_works()):
        out.onednn = torch.ops.mkldnn._reorder_linear_weight(w, 64)
    if out.onednn is None and gemm != "onednn":
        out.dense = w
    return out


def linear(x: Tensor, w: Weight) -> Tensor:
    """x (M, K) @ W.T -> (M, N)."""
    if x.shape[0] == 0:
        return x.new_empty(0, w.n)
    if w.panels is not None and x.shape[0] <= SMALL_ROWS:
        return load_kernel().packed_linear(x, w.panels, w.n)
    if w.onednn is not None:
        return torch.ops.mkldnn._linear_pointwise(x, w.onednn, None, "none", [], "")
    return F.linear(x, w.dense)
