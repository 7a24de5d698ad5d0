"""The selective scan of Mamba and Mamba-2 on the CPU, in plain (vectorised) torch.

One recurrence covers both mixers. Per head h, with a state of shape (P, N):

    h_t = exp(dt_t · A) ⊙ h_{t-1} + dt_t · x_t B_tᵀ,      y_t = h_t C_t + D · x_t

- Mamba-2: A (H,) is one scalar per head (the decay is shared by the head's state), x_t is
  the head's (P,) slice. `ssd_scan` computes it chunk by chunk in the state-space-duality
  form: inside a chunk a masked (T, T) "attention" matrix (C_l · B_s) · exp(Σ decay); between
  chunks a short recurrence on the chunk-end states. Only matmuls, no per-token loop.
- Mamba-1: A (H, N) differs per state channel (H = d_inner channels, P = 1); the decay can
  not be factored out of the (T, T) matrix, so `recurrent_scan` precomputes every step's
  decay and input in one vectorised pass and runs the time loop as one fused multiply-add
  per step.

`selective_scan` picks the form. Every function takes and returns the state, so a prefill
continues a cache and a verified speculative step advances a checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["recurrent_scan", "selective_scan", "ssd_scan"]


def _check(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    b, L, H, _ = x.shape
    if dt.shape != (b, L, H):
        raise ValueError(f"dt must be (batch, seq, heads) = {(b, L, H)}, got {tuple(dt.shape)}")
    if A.shape[0] != H or A.ndim not in (1, 2):
        raise ValueError(
            f"A must be (heads,) or (heads, d_state) with heads={H}, got {tuple(A.shape)}"
        )
    for name, t in (("B", B), ("C", C)):
        if t.ndim != 4 or t.shape[:2] != (b, L) or t.shape[2] not in (1, H):
            raise ValueError(
                f"{name} must be (batch, seq, heads or 1, d_state), got {tuple(t.shape)}"
            )


def recurrent_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The scan as a time loop (any A; the decoding step and Mamba-1's prefill).

    Args:
        x: (batch, seq, H, P) inputs.
        dt: (batch, seq, H) positive step sizes (after softplus).
        A: (H,) or (H, N) negative decay rates.
        B, C: (batch, seq, H or 1, N); 1 broadcasts over heads (Mamba-1 shares B and C).
        D: (H,) skip weights, or None.
        state: (batch, H, P, N) initial state, or None for zeros.
    Returns:
        y (batch, seq, H, P) and the final state (batch, H, P, N).
    """
    _check(x, dt, A, B, C)
    b, L, H, P = x.shape
    N = B.shape[-1]
    A2 = A if A.ndim == 2 else A[:, None]  # (H, N or 1)
    dA = torch.exp(dt[..., None] * A2)[:, :, :, None, :]  # (b, L, H, 1, N or 1)
    dBx = (dt[..., None, None] * x[..., None]) * B[:, :, :, None, :]  # (b, L, H, P, N)
    h = state if state is not None else x.new_zeros(b, H, P, N)
    if L == 1:  # a decoding step: no loop, no stacking
        h = torch.addcmul(dBx[:, 0], dA[:, 0], h)
        y = (h @ C[:, 0, :, :, None].expand(b, H, N, 1)).squeeze(-1)[:, None]  # (b, 1, H, P)
    else:
        states = []
        for t in range(L):
            h = torch.addcmul(dBx[:, t], dA[:, t], h)  # (b, H, P, N)
            states.append(h)
        hs = torch.stack(states, dim=1)  # (b, L, H, P, N)
        y = torch.einsum("blhpn,blhn->blhp", hs, C.expand(b, L, H, N))
    if D is not None:
        y = y + x * D[:, None]
    return y, h


def ssd_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    state: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """The scan in chunks, as matmuls (Mamba-2's state space duality); A is one scalar per head.

    Args:
        x: (batch, seq, H, P); dt: (batch, seq, H); A: (H,); B, C: (batch, seq, H or 1, N);
        D: (H,) or None; state: (batch, H, P, N) or None.
        chunk_size: T, the length of the blocks computed as one masked matrix.
    Returns:
        y (batch, seq, H, P) and the final state (batch, H, P, N).
    """
    _check(x, dt, A, B, C)
    if A.ndim != 1:
        raise ValueError("ssd_scan needs one decay per head, A of shape (heads,)")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    b, L, H, P = x.shape
    N = B.shape[-1]
    B, C = B.expand(b, L, H, N), C.expand(b, L, H, N)
    T = min(chunk_size, L)
    pad = (-L) % T
    xdt = x * dt[..., None]  # (b, L, H, P)
    a = dt * A  # (b, L, H) log-decay of each step
    if pad:  # dt = 0 on padding: no input, no decay, the final state is unchanged
        xdt, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xdt, B, C))
        a = F.pad(a, (0, 0, 0, pad))
    nc = (L + pad) // T
    xdt = xdt.reshape(b, nc, T, H, P)
    Bc, Cc = B.reshape(b, nc, T, H, N), C.reshape(b, nc, T, H, N)
    acum = a.reshape(b, nc, T, H).cumsum(2)  # (b, c, T, H)

    # Inside each chunk: y_l = Σ_{s<=l} (C_l·B_s) exp(acum_l - acum_s) xdt_s.
    seg = acum[:, :, :, None, :] - acum[:, :, None, :, :]  # (b, c, l, s, H)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp(seg.masked_fill(~causal[:, :, None], float("-inf")))
    scores = torch.einsum("bclhn,bcshn->bclsh", Cc, Bc) * decay  # (b, c, l, s, H)
    y = torch.einsum("bclsh,bcshp->bclhp", scores, xdt)

    # Each chunk's inputs carried to its end: (b, c, H, P, N).
    to_end = torch.exp(acum[:, :, -1:, :] - acum)  # (b, c, T, H)
    chunk_states = torch.einsum("bclhn,bclh,bclhp->bchpn", Bc, to_end, xdt)

    # Between chunks: the state entering each chunk (a loop over L / T chunks).
    h = state if state is not None else x.new_zeros(b, H, P, N)
    chunk_decay = torch.exp(acum[:, :, -1])  # (b, c, H)
    starts = []
    for c in range(nc):
        starts.append(h)
        h = h * chunk_decay[:, c, :, None, None] + chunk_states[:, c]
    h_in = torch.stack(starts, dim=1)  # (b, c, H, P, N)
    y = y + torch.einsum("bclhn,bchpn->bclhp", Cc, h_in) * torch.exp(acum)[..., None]
    y = y.reshape(b, nc * T, H, P)[:, :L]
    if D is not None:
        y = y + x * D[:, None]
    return y, h


def selective_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    state: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """`ssd_scan` where A is one scalar per head and seq > 1, else `recurrent_scan`.

    Shapes as in `recurrent_scan`. Computes in the inputs' dtype.
    """
    if A.ndim == 1 and x.shape[1] > 1:
        return ssd_scan(x, dt, A, B, C, D, state, chunk_size)
    return recurrent_scan(x, dt, A, B, C, D, state)
