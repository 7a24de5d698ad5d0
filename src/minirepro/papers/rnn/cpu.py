"""The CPU backend: a C++ extension (csrc/rnn_cpu.cpp) built on first use, and its autograd.

The extension is compiled with `torch.utils.cpp_extension.load` into a per-user cache folder
(`$MINIREPRO_CACHE` or `~/.cache/minirepro/torch_extensions/<machine tag>`), so the build
(~30-60 s) happens once per machine. Without a C++ compiler, `load_extension` raises
`CpuKernelUnavailable` with the reason, and `flashrnn(..., backend="auto")` falls back to the
reference loop with a warning.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from minirepro.core import extension
from minirepro.papers.rnn.functions import CellSpec

__all__ = ["CpuKernelUnavailable", "cpu_flashrnn", "extension_dir", "load_extension"]

_SOURCE = Path(__file__).parent / "csrc" / "rnn_cpu.cpp"

CpuKernelUnavailable = extension.KernelUnavailable  # the name this paper's API has always had


def extension_dir() -> Path:
    """Where the compiled extension is cached."""
    return extension.extension_dir("rnn_cpu")


@functools.cache
def load_extension(verbose: bool = False) -> ModuleType:
    """Builds (first call on a machine) or loads the C++ kernel.

    Raises:
        CpuKernelUnavailable: No C++ compiler, or the build failed.
    """
    return extension.load_cpp_extension(
        "rnn_cpu",
        _SOURCE,
        what="the FlashRNN CPU kernel",
        fallback="use backend='reference'",
        verbose=verbose,
    )


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
            spec.kernel_id,
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
        ctx.spec, ctx.first, ctx.clips = spec, first, (fw_clip, bw_clip)
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
            ctx.spec.kernel_id,
            Rf,
            s0.contiguous(),
            out,
            gates,
            dout,
            dlast,
            ctx.first,
            *ctx.clips,
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
    """Runs the C++ kernel. Shapes as in `flashrnn`; states (S, B, 1, N, D) is required."""
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
    return out, last[:, :, None]  # (S, B, T, N, D), (S, B, 1, N, D)
