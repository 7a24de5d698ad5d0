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


def pointwise(function: str, raw: list[Tensor], states: list[Tensor], first: bool) -> list[Tensor]:
    """One step of the gate math.

    Args:
        function: Cell function.
        raw: Pre-activations of the bias gates, each (B, N, D): Wx + R h + b where the gate
            has those terms (gru's g is R h + b only, its n is Wx + b only).
        states: The states before the step, each (B, N, D).
        first: sLSTM only: take m' = i (the reference does so while every n is zero).

    Returns:
        The new states, each (B, N, D), state 0 unclipped.
    """
    if function == "lstm":
        i, f, z, o = raw
        c = torch.sigmoid(f) * states[1] + torch.sigmoid(i) * torch.tanh(z)
        return [torch.sigmoid(o) * torch.tanh(c), c]
    if function == "slstm":
        i, f, z, o = raw
        _, c, n, m = states
        logf_m = F.logsigmoid(f) + m
        m_new = i if first else torch.maximum(i, logf_m)
        i_gate, f_gate = torch.exp(i - m_new), torch.exp(logf_m - m_new)
        c_new = f_gate * c + i_gate * torch.tanh(z)
        n_new = torch.maximum(f_gate * n + i_gate, torch.ones_like(n))
        return [torch.sigmoid(o) * c_new / n_new, c_new, n_new, m_new]
    if function == "gru":
        g, r, z, n = raw
        z = torch.sigmoid(z)
        return [z * states[0] + (1 - z) * torch.tanh(n + torch.sigmoid(r) * g)]
    if function == "elman":
        return [torch.tanh(raw[0])]
    raise ValueError(f"unknown RNN function {function!r}")


def flashrnn_reference(
    Wx: Tensor,
    R: Tensor,
    b: Tensor,
    states: Tensor | None = None,
    function: str = "lstm",
    forward_clipval: float | None = None,
    gradient_recurrent_clipval: float | None = None,
) -> tuple[Tensor, Tensor]:
    """The Python time loop. Shapes as in `flashrnn`; returns (all states, last states)."""
    spec = cell_spec(function)
    B, T, _, N, D = Wx.shape  # Wx: (B, T, Gw, N, D)
    if states is None:
        states = Wx.new_zeros(spec.n_states, B, 1, N, D)
    cur = list(states[:, :, 0].unbind(0))  # S x (B, N, D)
    first = bool((cur[2] == 0).all()) if function == "slstm" else False
    outs = []
    for t in range(T):
        h = cur[0]
        if gradient_recurrent_clipval is not None:
            h = _ClipGrad.apply(h, gradient_recurrent_clipval)
        ry = torch.einsum("bnp,gndp->bgnd", h, R)  # (B, Gr, N, D)
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
            cur[0] = cur[0].clamp(-forward_clipval, forward_clipval)
        outs.append(torch.stack(cur))  # (S, B, N, D)
    out = torch.stack(outs, dim=2)  # (S, B, T, N, D)
    return out, out[:, :, -1:]
