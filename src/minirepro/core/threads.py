"""The one context manager that sets torch's (and optionally BLAS's) intra-op threads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["num_threads"]


@contextlib.contextmanager
def num_threads(n: int | None, *, blas: bool = False) -> Iterator[None]:
    """torch uses `n` intra-op threads inside the block (None: unchanged); restored after.

    Args:
        n: threads, >= 1, or None to leave the setting alone.
        blas: also limit NumPy's BLAS / OpenMP pools (scikit-learn) to `n` via threadpoolctl.
    """
    if n is not None and n < 1:
        raise ValueError(f"threads must be >= 1 or None, got {n}")
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        if blas and n is not None:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(n):
                yield
        else:
            yield
    finally:
        torch.set_num_threads(previous)
