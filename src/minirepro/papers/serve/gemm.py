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

Under the engine's low-precision dtypes (`dtypes.py`) `pack` lays out bf16 weights for
oneDNN (its AMX / AVX512-BF16 kernels; `F.linear` on bf16 where oneDNN is missing) and, for
"int8", also the int8 weight and its per-channel scales, multiplied for batches of at most
`INT8_ROWS` rows by the packed int8 kernel (csrc/packed_gemm.cpp: int8 panels widened to
fp32 in registers) or, without a C++ compiler, by `torch._weight_int8pack_mm` (at most
`TORCH_INT8_ROWS`). SmolLM2-135M's matrices, one thread, Xeon with AMX, load 9 from other
jobs (`python benchmarks/serve_kernels.py --only-dtypes`): int8 kernel 38 ms a step for 1-4 rows,
59 ms for 8, 100 ms for 16; torch's int8 58 / 78 / 126 (8 rows); bf16 oneDNN 71-76 ms for
1-16 rows; so int8 up to 8 rows, bf16 above.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from minirepro.papers.serve.dtypes import dequantize_int8, quantize_int8
from minirepro.papers.serve.kernels import kernel_available, load_kernel

__all__ = [
    "GEMMS",
    "INT8_ROWS",
    "SMALL_ROWS",
    "TORCH_INT8_ROWS",
    "Weight",
    "linear",
    "pack",
    "resolve_gemm",
]

GEMMS = ("auto", "packed", "onednn", "torch")
SMALL_ROWS = 48  # at most this many rows go to the packed kernel (crossover ~64, measured)
INT8_ROWS = 8  # at most this many rows go to the int8 kernel, more to bf16 oneDNN (measured)
TORCH_INT8_ROWS = 4  # the same for torch._weight_int8pack_mm (no C++ compiler)


@dataclass
class Weight:
    """One (N, K) weight in the layouts `linear` may read (None where not built)."""

    n: int
    dense: Tensor | None = None  # (N, K): F.linear
    onednn: Tensor | None = None  # oneDNN's blocked layout (an opaque mkldnn tensor)
    panels: Tensor | None = None  # (ceil(N / 16), K, 16): the packed kernel
    int8: Tensor | None = None  # (N, K) int8: torch._weight_int8pack_mm, few rows
    scale: Tensor | None = None  # (N,) per-output-channel scales of int8 (fp32; bf16 for torch)
    panels8: Tensor | None = None  # (ceil(N / 16), K, 16) int8: the packed int8 kernel


@functools.cache
def _onednn_works(dtype: torch.dtype = torch.float32) -> bool:
    if not (
        torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    ):
        return False
    try:  # a private op of torch's: check that it runs here before relying on it
        w = torch.ops.mkldnn._reorder_linear_weight(torch.randn(4, 8, dtype=dtype), 64)
        y = torch.ops.mkldnn._linear_pointwise(
            torch.randn(2, 8, dtype=dtype), w, None, "none", [], ""
        )
        return y.shape == (2, 4) and y.dtype == dtype
    except (RuntimeError, AttributeError):
        return False


@functools.cache
def _int8_works() -> bool:
    """Whether torch's weight-only int8 matmul runs here (bf16 inputs)."""
    try:
        x = torch.ones(1, 64, dtype=torch.bfloat16)
        q = torch.ones(8, 64, dtype=torch.int8)
        y = torch._weight_int8pack_mm(x, q, torch.ones(8, dtype=torch.bfloat16))
        return bool((y.float() == 64).all())
    except (RuntimeError, AttributeError):
        return False


def resolve_gemm(gemm: str, like: Tensor, dtype: str = "float32") -> str:
    """What `gemm` (one of GEMMS) resolves to for weights like `like` under the engine's
    resolved `dtype` ("float32", "bfloat16" or "int8").

    "packed": the packed kernel for few rows, oneDNN (or F.linear) for many; "onednn"; "torch".
    The packed kernel is fp32 only: under "bfloat16" / "int8", "auto" is oneDNN (bf16) where
    it runs, else "torch".
    """
    if gemm not in GEMMS:
        raise ValueError(f"gemm must be one of {GEMMS}, got {gemm!r}")
    if gemm == "torch":
        return "torch"
    cpu = like.device.type == "cpu"
    fp32 = dtype == "float32"
    if fp32 and like.dtype != torch.float32:
        if gemm != "auto":
            raise ValueError(f"gemm={gemm!r} needs float32 CPU weights, got {like.dtype}")
        return "torch"
    onednn = cpu and _onednn_works(torch.float32 if fp32 else torch.bfloat16)
    if gemm == "packed" and not (fp32 and cpu and kernel_available()):
        raise ValueError(
            "the packed GEMM kernel needs dtype 'float32', CPU weights and a C++ compiler "
            f"(dtype {dtype!r}); use gemm='onednn' or 'auto'"
        )
    if gemm == "onednn" and not onednn:
        raise ValueError(f"oneDNN matmul is not available here for dtype {dtype!r}")
    if gemm == "auto":
        if fp32 and cpu and kernel_available():
            return "packed"
        return "onednn" if onednn else "torch"
    return gemm


def pack(w: Tensor, gemm: str, dtype: str = "float32") -> Weight:
    """w (N, K) laid out for `gemm` (a resolved one: "packed", "onednn" or "torch") under
    the engine's resolved `dtype` ("float32", "bfloat16" or "int8")."""
    w = w.detach().contiguous()
    out = Weight(n=w.shape[0])
    if dtype == "int8":
        q, scale = quantize_int8(w)
        if w.device.type == "cpu" and kernel_available():
            out.panels8, out.scale = load_kernel().pack_weight_int8(q), scale
        elif _int8_works():
            out.int8, out.scale = q, scale.to(torch.bfloat16)
        else:
            raise ValueError(
                "no int8 matmul runs here (no C++ compiler, and torch's weight-only "
                "int8 kernel fails); use dtype='bfloat16'"
            )
        w = dequantize_int8(q, scale)  # many rows: the same quantized weights, in bf16
    if dtype != "float32":
        w = w.to(torch.bfloat16)
    if gemm == "packed":
        out.panels = load_kernel().pack_weight(w)
    if gemm == "onednn" or (gemm == "packed" and _onednn_works()):
        out.onednn = torch.ops.mkldnn._reorder_linear_weight(w, 64)
    if out.onednn is None and gemm != "onednn":
        out.dense = w
    return out


def linear(x: Tensor, w: Weight) -> Tensor:
    """x (M, K) @ W.T -> (M, N), in x's dtype (fp32; bf16 for bf16 and int8 weights)."""
    if x.shape[0] == 0:
        return x.new_empty(0, w.n)
    if w.panels is not None and x.shape[0] <= SMALL_ROWS:
        return load_kernel().packed_linear(x, w.panels, w.n)
    if w.panels8 is not None and x.shape[0] <= INT8_ROWS:
        return load_kernel().packed_linear_int8(x.float(), w.panels8, w.scale, w.n).to(x.dtype)
    if w.int8 is not None and x.shape[0] <= TORCH_INT8_ROWS:
        return torch._weight_int8pack_mm(x, w.int8, w.scale)
    if w.onednn is not None:
        return torch.ops.mkldnn._linear_pointwise(x, w.onednn, None, "none", [], "")
    return F.linear(x, w.dense)
