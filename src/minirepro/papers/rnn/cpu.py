"""The CPU backend: a C++ extension (csrc/rnn_cpu.cpp) built on first use, and its autograd.

The extension is compiled with `torch.utils.cpp_extension.load` into a per-user cache folder
(`$MINIREPRO_CACHE` or `~/.cache/minirepro/torch_extensions/<machine tag>`), so the build
(~30-60 s) happens once per machine. Without a C++ compiler, `load_extension` raises
`CpuKernelUnavailable` with the reason, and `flashrnn(..., backend="auto")` falls back to the
reference loop with a warning.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from minirepro.core import extension
from minirepro.papers.rnn.functions import CellSpec, cpp_defines

__all__ = [
    "CpuKernelUnavailable",
    "buffer_pool_stats",
    "cpu_flashrnn",
    "extension_dir",
    "load_extension",
    "release_buffers",
    "set_buffer_pool_limit",
]

_SOURCE = Path(__file__).parent / "csrc" / "rnn_cpu.cpp"

CpuKernelUnavailable = extension.KernelUnavailable  # the name this paper's API has always had

# Whether the kernel is built with -fopenmp, so that at::parallel_for spreads the (batch
# tile, head group) work items over torch's intra-op threads; without it they all run on the
# calling thread. Off: on the shared 2-core machine the second thread found no free core
# (lstm fwd+bwd 1.00x, elman 0.82x of the serial build at load 1.3; NOTES.md, "OpenMP").
# `load_extension(openmp=True)` builds the threaded variant for machines with free cores.
OPENMP = False

# Dtypes the kernel computes in; bf16/fp16 inputs are computed in fp32 (see cpu_flashrnn).
KERNEL_DTYPES = (torch.float32, torch.float64)
UPCAST_DTYPES = (torch.bfloat16, torch.float16)


def _name(openmp: bool) -> str:
    return "rnn_cpu_omp" if openmp else "rnn_cpu_serial"


def extension_dir(openmp: bool = OPENMP) -> Path:
    """Where the compiled extension is cached."""
    return extension.extension_dir(_name(openmp))


@functools.cache
def load_extension(verbose: bool = False, openmp: bool = OPENMP) -> ModuleType:
    """Builds (first call on a machine) or loads the C++ kernel.

    Args:
        verbose: Show the compiler's output.
        openmp: Build with -fopenmp (threads for the work items; a separate module and cache
            folder); the default is `OPENMP`.

    Raises:
        CpuKernelUnavailable: No C++ compiler, or the build failed.
    """
    ext = extension.load_cpp_extension(
        _name(openmp),
        _SOURCE,
        what="the FlashRNN CPU kernel",
        fallback="use backend='reference'",
        openmp=openmp,
        extra_cflags=cpp_defines(),
        verbose=verbose,
    )
    limit_mb = os.environ.get("MINIREPRO_RNN_POOL_MB")
    if limit_mb is not None:
        ext.pool_set_limit(int(float(limit_mb) * 2**20))
    return ext


@dataclass(frozen=True)
class PoolStats:
    """The kernel's output buffer pool.

    Attributes:
        held_bytes: Bytes of the buffers the pool tracks (in use or free).
        free_bytes: Bytes of those no tensor uses any more (kept for reuse).
        limit_bytes: The most the pool keeps (`set_buffer_pool_limit`).
    """

    held_bytes: int
    free_bytes: int
    limit_bytes: int


def buffer_pool_stats() -> PoolStats:
    """Returns the state of the process-wide pool of large output buffers (>= 4 MiB)."""
    return PoolStats(*load_extension().pool_stats())


def set_buffer_pool_limit(nbytes: int) -> int:
    """Sets the pool's limit (1 GiB by default, or $MINIREPRO_RNN_POOL_MB); 0 disables it.

    Free buffers above the new limit are released at once.

    Returns:
        The bytes released.
    """
    if nbytes < 0:
        raise ValueError(f"the pool limit must be >= 0 bytes, got {nbytes}")
    return int(load_extension().pool_set_limit(int(nbytes)))


def release_buffers() -> int:
    """Releases every pooled buffer that no tensor uses any more; returns the bytes released."""
    return int(load_extension().pool_release())


def _opt(v: float | None) -> float:
    if v is not None and v <= 0:
        raise ValueError(f"clip values must be positive, got {v}")
    return 0.0 if v is None else float(v)


class _CpuRNN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, Wx, R, b, s0, spec, first, fw_clip, bw_clip, tile, head_group):
        ext = load_extension()
        N, D = Wx.shape[3], Wx.shape[4]
        Gr = spec.n_gates_r
        Rt = R.permute(1, 3, 0, 2).reshape(N, D, Gr * D).contiguous()  # (N, P, Gr*D)
        store = any(ctx.needs_input_grad[:4])
        out, gates = ext.forward(
            spec.kernel_args,
            Wx.contiguous(),
            Rt,
            b.contiguous(),
            s0.contiguous(),
            store,
            first,
            fw_clip,
            tile,
            head_group,
        )  # out: (S, B, T, N, D)
        if store:
            ctx.save_for_backward(R, s0, out, gates)
        ctx.spec, ctx.first, ctx.bw_clip = spec, first, bw_clip
        ctx.tiles = (tile, head_group)
        return out, out[:, :, -1].clone()

    @staticmethod
    def backward(ctx, dout, dlast):
        ext = load_extension()
        R, s0, out, gates = ctx.saved_tensors
        Gr, N, D, _ = R.shape
        Rf = R.permute(1, 0, 2, 3).reshape(N, Gr * D, D).contiguous()  # (N, Gr*D, P)
        dout = dout.contiguous() if dout is not None else None
        dlast = dlast.contiguous() if dlast is not None else None
        dWx, dR_parts, db_parts, ds0 = ext.backward(
            ctx.spec.kernel_args,
            Rf,
            s0.contiguous(),
            out,
            gates,
            dout,
            dlast,
            ctx.first,
            ctx.bw_clip,
            *ctx.tiles,
        )
        dR = dR_parts.sum(0).view(N, Gr, D, D).permute(1, 0, 2, 3)  # (Gr, N, D, P)
        return dWx, dR, db_parts.sum(0), ds0, None, None, None, None, None, None


def cpu_flashrnn(
    Wx: Tensor,
    R: Tensor,
    b: Tensor,
    states: Tensor,
    spec: CellSpec,
    *,
    first_slstm: bool,
    forward_clipval: float | None,
    gradient_recurrent_clipval: float | None,
    batch_tile: int,
    head_group: int,
) -> tuple[Tensor, Tensor]:
    """Runs the C++ kernel. Shapes as in `flashrnn`; states (S, B, 1, N, D) is required.

    fp32 and fp64 run as they are. bf16 and fp16 inputs are computed in fp32 (cast in, the
    outputs cast back, gradients through the casts), as flashrnn's kernels accumulate in fp32.
    """
    dtype = Wx.dtype
    if dtype in UPCAST_DTYPES:
        Wx, R, b, states = (x.float() for x in (Wx, R, b, states))
    elif dtype not in KERNEL_DTYPES:
        raise ValueError(f"backend='cpu' takes floating-point tensors, got {dtype}")
    s0 = states[:, :, 0]  # (S, B, N, D)
    out, last = _CpuRNN.apply(
        Wx,
        R,
        b,
        s0,
        spec,
        first_slstm,
        _opt(forward_clipval),
        _opt(gradient_recurrent_clipval),
        batch_tile,
        head_group,
    )
    if dtype != out.dtype:
        out, last = out.to(dtype), last.to(dtype)
    return out, last[:, :, None]  # (S, B, T, N, D), (S, B, 1, N, D)
