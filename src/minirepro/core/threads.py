"""Where torch runs: the one context manager that sets torch's (and optionally BLAS's)
intra-op threads, and a pool of single-threaded worker processes."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor

import torch

__all__ = ["num_threads", "process_pool"]


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


def _set_threads(n: int) -> None:
    torch.set_num_threads(n)


def process_pool(workers: int, threads: int = 1) -> Executor:
    """A pool of `workers` processes with `threads` torch threads each (spawned: safe with
    OpenMP and torch).

    On two cores, two single-threaded processes beat one process with two intra-op threads
    for models this small, whose per-op synchronisation dominates (a 3-layer d=96 decoder:
    1.5x the training steps per second). Submitted functions and their arguments must pickle
    (module-level functions, `functools.partial`, tensors).
    """
    if workers < 1 or threads < 1:
        raise ValueError(f"workers and threads must be >= 1, got {workers} and {threads}")
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_set_threads,
        initargs=(threads,),
    )
