"""The engine's number formats: fp32, bf16, and weight-only int8.

- ``"float32"``: weights, activations and KV cache in fp32 (the reference).
- ``"bfloat16"``: weights and KV cache in bf16; the residual stream and the norms stay fp32
  (each GEMM's input is rounded to bf16, its output added to the fp32 residual), logits
  come back in fp32. Halves the bytes a decode step reads.
- ``"int8"``: weight-only int8 for the projection GEMMs of decode steps (per-output-channel
  scales, symmetric, `quantize_int8`), activations and KV cache as in "bfloat16". A batch
  of more than `gemm.INT8_ROWS` rows (prefill, large decode batches) is multiplied by a
  bf16 copy of the weights instead, which oneDNN runs on the AMX / AVX512-BF16 units: torch's
  weight-only int8 kernel dequantises every weight once per call and is slower than bf16 from
  a few rows on (measured in `benchmarks/serve_kernels.py`). So int8 costs the memory of both.

bf16 and int8 need native bf16 arithmetic: `resolve_dtype` checks `core.precision.
cpu_features()` and, where the CPU lacks it (emulated bf16 is slower than fp32), warns and
returns "float32" with the reason. Weight-only int8 is dequantised to bf16 before the
multiply-adds, so it needs bf16, not the int8 dot-product instructions (VNNI / AMX-INT8).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from minirepro.core.precision import CpuFeatures, cpu_features

__all__ = ["DTYPES", "activation_dtype", "dequantize_int8", "quantize_int8", "resolve_dtype"]

DTYPES = ("float32", "bfloat16", "int8")


def check_dtype(dtype: str) -> str:
    """Returns ``dtype`` if it is one of `DTYPES`, else raises ValueError."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(map(repr, DTYPES))}, got {dtype!r}")
    return dtype


def fallback_reason(dtype: str, device: torch.device | str, features: CpuFeatures) -> str | None:
    """Why ``dtype`` cannot run natively on ``device`` (None when it can)."""
    if check_dtype(dtype) == "float32":
        return None
    if torch.device(device).type != "cpu":
        return f"dtype={dtype!r} is implemented for CPU weights only"
    if not features.native_bf16:
        return (
            f"dtype={dtype!r} needs native bf16 matmul (AMX-BF16, AVX512-BF16 or Arm BF16); "
            f"this CPU has {features.describe()}, where emulated bf16 is slower than fp32"
        )
    return None


def resolve_dtype(
    dtype: str, device: torch.device | str = "cpu", features: CpuFeatures | None = None
) -> str:
    """The dtype the engine runs: ``dtype``, or "float32" (with a RuntimeWarning saying why)
    where the hardware lacks native bf16.

    Args:
        dtype: One of `DTYPES`.
        device: Where the weights live.
        features: The CPU's features (default: `cpu_features()` of this machine).
    """
    reason = fallback_reason(dtype, device, cpu_features() if features is None else features)
    if reason is None:
        return dtype
    warnings.warn(f"{reason}; the engine runs in float32", RuntimeWarning, stacklevel=2)
    return "float32"


def activation_dtype(dtype: str) -> torch.dtype:
    """The dtype of GEMM inputs and of the KV cache under a resolved engine dtype."""
    return torch.float32 if check_dtype(dtype) == "float32" else torch.bfloat16


def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-channel int8: w (N, K) -> (q (N, K) int8, scale (N,) fp32), with
    w ~ q * scale[:, None] and q in [-127, 127] (a zero row gets scale 1)."""
    if w.dim() != 2:
        raise ValueError(f"quantize_int8 takes a 2-D weight, got shape {tuple(w.shape)}")
    w = w.detach().float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale


def dequantize_int8(q: Tensor, scale: Tensor) -> Tensor:
    """The fp32 weight an int8 (q, scale) pair stands for: (N, K)."""
    return q.float() * scale[:, None]
