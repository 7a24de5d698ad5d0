"""`flashrnn(Wx, R, b, states, function, backend)`: the reference package's contract.

Shapes (B batch, T time, G gates, N heads, D head size, S states):
    Wx (B, T, Gw, N, D), R (Gr, N, D, D), b (Gb, N, D), states (S, B, 1, N, D);
    returns all states (S, B, T, N, D) and the last states (S, B, 1, N, D); state 0 is h.
R[g, n] maps the previous hidden state of head n to gate g as a Linear weight would
(out x in), so `R[g, n] @ h` is head n's recurrent input to gate g.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import Tensor

from minirepro.core.precision import fp32_kernel
from minirepro.papers.rnn.cpu import CpuKernelUnavailable, cpu_flashrnn, load_extension
from minirepro.papers.rnn.functions import cell_spec
from minirepro.papers.rnn.reference import flashrnn_reference

__all__ = ["BACKENDS", "Backend", "flashrnn"]

Backend = Literal["auto", "cpu", "reference", "triton"]
BACKENDS = ("auto", "cpu", "reference", "triton")


def _check_shapes(Wx: Tensor, R: Tensor, b: Tensor, states: Tensor | None, function: str):
    spec = cell_spec(function)
    if Wx.ndim != 5:
        raise ValueError(f"Wx must be (B, T, G, N, D), got shape {tuple(Wx.shape)}")
    B, T, Gw, N, D = Wx.shape
    expect = {
        "Wx": (Wx.shape, (B, T, spec.n_gates_w, N, D)),
        "R": (R.shape, (spec.n_gates_r, N, D, D)),
        "b": (b.shape, (spec.n_gates_b, N, D)),
    }
    if states is not None:
        expect["states"] = (states.shape, (spec.n_states, B, 1, N, D))
    for name, (got, want) in expect.items():
        if tuple(got) != want:
            raise ValueError(f"{function}: {name} must have shape {want}, got {tuple(got)}")
    tensors = {"Wx": Wx, "R": R, "b": b} | ({"states": states} if states is not None else {})
    for name, x in tensors.items():
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if x.dtype != Wx.dtype or x.device != Wx.device:
            raise ValueError(
                f"{name} is {x.dtype} on {x.device} but Wx is {Wx.dtype} on {Wx.device}; "
                "pass all tensors in one dtype on one device"
            )
    if T == 0:
        raise ValueError("the sequence is empty (T = 0)")
    return spec


@fp32_kernel  # fp32 kernels: under bf16 autocast the inputs are cast to fp32
def flashrnn(
    Wx: Tensor,
    R: Tensor,
    b: Tensor,
    states: Tensor | None = None,
    function: str = "lstm",
    backend: Backend = "auto",
    *,
    forward_clipval: float | None = None,
    gradient_recurrent_clipval: float | None = None,
    batch_tile: int | None = None,
    head_group: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Runs a head-wise RNN over a sequence of pre-computed input projections.

    Args:
        Wx: Input projections (B, T, Gw, N, D), gates in the order of `functions.FUNCTIONS`.
        R: Recurrent blocks (Gr, N, D, D), one D x D matrix per gate and head.
        b: Biases (Gb, N, D).
        states: Initial states (S, B, 1, N, D); zeros if None.
        function: "lstm", "slstm", "gru" or "elman".
        backend: "cpu" (the C++ kernel), "triton" (the fused Triton kernels, fp32; CUDA
            tensors, or CPU tensors under TRITON_INTERPRET=1), "reference" (Python loop,
            autograd), or "auto": cpu for CPU tensors (falling back to reference with a
            warning if the kernel cannot be built), triton for fp32 CUDA tensors, reference
            with a warning for other CUDA dtypes. On the CPU backend bf16 and fp16 inputs
            are computed in fp32 and the outputs cast back (as flashrnn accumulates in fp32).
        forward_clipval: Clamp the hidden output h (state 0) to [-v, v] after each step,
            in the output and in what feeds the next step; the backward passes the gradient
            through the clamp unchanged. This is what flashrnn's CUDA kernels do (its only
            backends that take the option; its vanilla loops ignore it).
        gradient_recurrent_clipval: Clamp the gradient that reaches h_{t-1} from step t
            (through R, and gru's direct z h path) to [-v, v] before h_{t-1}'s own output
            gradient is added, as flashrnn's CUDA kernels do; the initial state's gradient
            is not clamped.
        batch_tile: Batch rows per work item of the CPU kernel; chosen by ConstrINT if None.
        head_group: Heads per work item of the CPU kernel (a divisor of N); ConstrINT's
            choice if None.

    Returns:
        (all states (S, B, T, N, D), last states (S, B, 1, N, D)).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    spec = _check_shapes(Wx, R, b, states, function)
    B, T, _, N, D = Wx.shape
    if states is None:
        states = Wx.new_zeros(spec.n_states, B, 1, N, D)
    if backend == "auto":
        if Wx.device.type == "cuda" and _triton_available() and Wx.dtype == torch.float32:
            backend = "triton"
        elif Wx.device.type != "cpu":
            warnings.warn(
                f"no kernel for {Wx.dtype} on {Wx.device.type} (the Triton backend needs "
                "triton and fp32 CUDA tensors); using the reference loop",
                stacklevel=2,
            )
            backend = "reference"
        else:
            try:
                load_extension()
                backend = "cpu"
            except CpuKernelUnavailable as exc:
                warnings.warn(f"{exc}; falling back to the slow reference loop", stacklevel=2)
                backend = "reference"
    if backend == "reference":
        return flashrnn_reference(
            Wx, R, b, states, function, forward_clipval, gradient_recurrent_clipval
        )
    first = bool((states[2] == 0).all()) if function == "slstm" else False
    if backend == "cpu":
        if Wx.device.type != "cpu":
            raise ValueError("backend='cpu' needs CPU tensors")
        if batch_tile is None or head_group is None:
            from minirepro.papers.rnn.tiling import cpu_tiles

            tiles = cpu_tiles(B, N, D, spec.n_gates_b, torch.get_num_threads())
            batch_tile = batch_tile or tiles.batch_tile
            head_group = head_group or tiles.head_group
        return cpu_flashrnn(
            Wx, R, b, states, spec,
            first_slstm=first,
            forward_clipval=forward_clipval,
            gradient_recurrent_clipval=gradient_recurrent_clipval,
            batch_tile=batch_tile,
            head_group=head_group,
        )  # fmt: skip
    if backend == "triton":
        return _triton(Wx, R, b, states, spec, first, forward_clipval, gradient_recurrent_clipval)
    raise AssertionError(backend)  # unreachable: checked above


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _triton(Wx, R, b, states, spec, first, forward_clipval, gradient_recurrent_clipval):
    if not _triton_available():
        raise ValueError(
            "backend='triton' needs the triton package (pip install 'triton>=3.4,<3.9')"
        )
    from minirepro.papers.rnn.tiling import gpu_limits, triton_tiles
    from minirepro.papers.rnn.triton_kernel import interpreting, triton_flashrnn

    if Wx.dtype != torch.float32:
        raise ValueError(
            f"backend='triton' supports float32 only, got {Wx.dtype}; use backend='auto' "
            "or 'reference', or cast to float32"
        )
    if Wx.device.type != "cuda" and not interpreting():
        raise ValueError(
            "backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before triton is "
            f"imported to run it on the CPU (got {Wx.device.type} tensors)"
        )
    _, _, _, N, D = Wx.shape
    tiles = triton_tiles(Wx.shape[0], D, spec.n_gates_r, N, gpu_limits(Wx.device))
    return triton_flashrnn(
        Wx, R, b, states, spec,
        first_slstm=first,
        forward_clipval=_clip_arg(forward_clipval),
        gradient_recurrent_clipval=_clip_arg(gradient_recurrent_clipval),
        tiles=tiles,
    )  # fmt: skip


def _clip_arg(v: float | None) -> float:
    if v is not None and v <= 0:
        raise ValueError(f"clip values must be positive, got {v}")
    return 0.0 if v is None else float(v)
