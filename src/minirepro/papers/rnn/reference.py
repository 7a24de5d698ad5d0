"""A slow, obviously-correct oracle: the time loop in plain PyTorch, differentiated by autograd.

Same contract as `flashrnn` (see its docstring). It follows the equations of the paper and
of the reference package's vanilla backend, including sLSTM's first-step rule (when every
normaliser state n is zero, m' = i) and the tie rules of `torch.maximum`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from minirepro.papers.rnn.functions import cell_spec

__all__ = ["flashrnn_reference", "pointwise"]


class _ClipGrad(torch.autograd.Function):
    """Identity forward; clamps the gradient to [-v, v] in backward."""

    @staticmethod
    def forward(ctx, x: Tensor, v: float) -> Tensor:
        ctx.v = v
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor):
        return g.clamp(-ctx.v, ctx.v), None


class _ClampStraightThrough(torch.autograd.Function):
    """Clamps to [-v, v] forward; passes the gradient through unchanged (flashrnn's CUDA
    kernels clip y in the forward and their backward never looks at the clip)."""

    @staticmethod
    def forward(ctx, x: Tensor, v: float) -> Tensor:
        return x.clamp(-v, v)

    @staticmethod
    def backward(ctx, g: Tensor):
        return g, None


def pointwise(function: str, raw: list[Tensor], states: list[Tensor], first: bool) -> list[Tensor]:
    """One step of the gate math.

    Args:
        function: Cell function.
        raw: Pre-activations of the bias gates (`CellSpec.gates_b`), each (B, N, D): Wx + R h
            + b where the gate has those terms (gru's g is R h + b only, its n is Wx + b only).
        states: The states before the step (`CellSpec.states`), each (B, N, D).
        first: sLSTM only: take m' = i (the reference does so while every n is zero).

    Returns:
        The new states, each (B, N, D), state 0 unclipped.
    """
    spec = cell_spec(function)
    g = dict(zip(spec.gates_b, raw, strict=True))
    s = dict(zip(spec.states, states, strict=True))
    if function == "lstm":
        c = torch.sigmoid(g["f"]) * s["c"] + torch.sigmoid(g["i"]) * torch.tanh(g["z"])
        return [torch.sigmoid(g["o"]) * torch.tanh(c), c]
    if function == "slstm":
        logf_m = F.logsigmoid(g["f"]) + s["m"]
        m_new = g["i"] if first else torch.maximum(g["i"], logf_m)
        i_gate, f_gate = torch.exp(g["i"] - m_new), torch.exp(logf_m - m_new)
        c_new = f_gate * s["c"] + i_gate * torch.tanh(g["z"])
        n_new = torch.maximum(f_gate * s["n"] + i_gate, torch.ones_like(s["n"]))
        return [torch.sigmoid(g["o"]) * c_new / n_new, c_new, n_new, m_new]
    if function == "gru":
        z = torch.sigmoid(g["z"])
        return [z * s["h"] + (1 - z) * torch.tanh(g["n"] + torch.sigmoid(g["r"]) * g["g"])]
    if function == "elman":
        return [torch.tanh(g["a"])]
    raise ValueError(f"no gate math for {function!r}")


def flashrnn_reference(
    Wx: Tensor,
    R: Tensor,
    b: Tensor,
    states: Tensor | None = None,
    function: str = "lstm",
    forward_clipval: float | None = None,
    gradient_recurrent_clipval: float | None = None,
) -> tuple[Tensor, Tensor]:
    """The Python time loop. Shapes as in `flashrnn`; returns (all states, last states).

    Clipping as flashrnn's CUDA kernels do it: `forward_clipval` clamps state 0 (h) after
    each step, in the output and in what feeds the next step, and the backward passes the
    gradient through the clamp unchanged; `gradient_recurrent_clipval` clamps the gradient
    that reaches h_{t-1} from step t (through R and, for gru, the direct z h path) before
    the gradient of h_{t-1}'s own output is added; the initial state's gradient is not
    clamped.
    """
    spec = cell_spec(function)
    B, T, _, N, D = Wx.shape  # Wx: (B, T, Gw, N, D)
    if states is None:
        states = Wx.new_zeros(spec.n_states, B, 1, N, D)
    cur = list(states[:, :, 0].unbind(0))  # S x (B, N, D)
    first = bool((cur[2] == 0).all()) if function == "slstm" else False
    outs = []
    for t in range(T):
        if gradient_recurrent_clipval is not None and t > 0:
            cur[0] = _ClipGrad.apply(cur[0], gradient_recurrent_clipval)
        ry = torch.einsum("bnp,gndp->bgnd", cur[0], R)  # (B, Gr, N, D)
        raw = []
        for j in range(spec.n_gates_b):
            v = b[j]
            if j < spec.n_gates_r:
                v = v + ry[:, j]
            if j >= spec.w_offset:
                v = v + Wx[:, t, j - spec.w_offset]
            raw.append(v)
        cur = pointwise(function, raw, cur, first and t == 0)
        if forward_clipval is not None:
            cur[0] = _ClampStraightThrough.apply(cur[0], forward_clipval)
        outs.append(torch.stack(cur))  # (S, B, N, D)
    out = torch.stack(outs, dim=2)  # (S, B, T, N, D)
    return out, out[:, :, -1:]
