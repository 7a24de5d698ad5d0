"""The serve engine's C++ CPU kernels (csrc/): paged decode attention and a packed GEMM for
the few rows of a decoding batch. Built on first use (`minirepro.core.extension`, ~1 min once
per machine); where they cannot be built, callers use their torch paths."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from types import ModuleType

from minirepro.core import extension

__all__ = ["kernel_available", "load_kernel"]

_SOURCES = [Path(__file__).parent / "csrc" / f for f in ("paged_attention.cpp", "packed_gemm.cpp")]


@functools.cache
def load_kernel() -> ModuleType:
    """Builds (first call on a machine) or loads the kernels.

    Raises:
        KernelUnavailable: No C++ compiler, or the build failed.
    """
    return extension.load_cpp_extension(
        "serve_kernels",
        _SOURCES,
        what="the serve engine's CPU kernels",
        fallback="use attention='torch' and gemm='onednn' or 'torch'",
        openmp=True,
    )


@functools.cache
def kernel_available() -> bool:
    """Whether the kernels build here (warns once with the reason when they do not)."""
    try:
        load_kernel()
        return True
    except extension.KernelUnavailable as exc:
        warnings.warn(f"{exc}; the engine uses its torch paths", stacklevel=2)
        return False
