"""Small tensor helpers shared by the flow modules."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["batch_view", "time_vector"]


def batch_view(v: Tensor, x: Tensor) -> Tensor:
    """A scalar or per-sample (B,) coefficient, viewed to broadcast against x (B, ...).

    Anything else (already broadcastable, e.g. (B, 1)) is returned unchanged.
    """
    if v.ndim == 1 and x.ndim > 1 and v.shape[0] == x.shape[0]:
        return v.view(-1, *([1] * (x.ndim - 1)))
    return v


def time_vector(t: Tensor | float, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Times as a (B,) vector for a batch x (B, ...): a scalar is repeated.

    The dtype is x's for floating x, else `dtype` (default: torch's default float).
    """
    if dtype is None:
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    t = torch.as_tensor(t, dtype=dtype, device=x.device)
    if t.ndim == 0:
        return t.expand(x.shape[0])
    return t.reshape(x.shape[0])
