"""C++ kernels built on first use with `torch.utils.cpp_extension.load`, cached per machine.

A paper whose hot loop has no good torch formulation on the CPU ships a C++ source under its
`csrc/` folder and loads it with `load_cpp_extension`. The build (~30-60 s) happens once per
machine into `$MINIREPRO_CACHE` or `~/.cache/minirepro/torch_extensions/<name>_<machine tag>/
<source hash>`; the tag covers the instruction set (the build uses -march=native) and the torch
version, the hash the sources and flags (so two checkouts never build into one folder).
Without a C++ compiler, or when the build fails, `KernelUnavailable` says why, and callers
fall back to their torch path.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["KernelUnavailable", "extension_dir", "load_cpp_extension"]

FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math"]


class KernelUnavailable(RuntimeError):
    """A C++ kernel could not be built or loaded (no compiler, build error)."""


def _machine_tag() -> str:
    """Distinguishes machines with different instruction sets, and torch versions."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    key = f"{platform.machine()}|{flags}|{torch.__version__}"
    return hashlib.sha1(key.encode()).hexdigest()[:10]


def extension_dir(name: str) -> Path:
    """Where the extension `name` is built and cached."""
    root = os.environ.get("MINIREPRO_CACHE") or Path.home() / ".cache" / "minirepro"
    return Path(root) / "torch_extensions" / f"{name}_{_machine_tag()}"


def load_cpp_extension(
    name: str,
    source: Path | list[Path],
    what: str,
    fallback: str,
    openmp: bool = False,
    extra_cflags: list[str] | None = None,
    verbose: bool = False,
) -> ModuleType:
    """Builds (first call on a machine) or loads the C++ extension `minirepro_<name>`.

    Args:
        name: Short name of the extension (also its cache folder).
        source: The .cpp file (or files).
        what: What the kernel is, for error messages ("the FlashRNN CPU kernel").
        fallback: What the user can do without it ("use backend='reference'").
        openmp: Compile with -fopenmp, which `at::parallel_for` needs to run on torch's
            intra-op threads (without it, it runs the whole range on the calling thread).
            The extension then shares the libgomp that torch has loaded (same soname).
        extra_cflags: More compiler flags, e.g. `-D` defines generated from a Python table.

    Raises:
        KernelUnavailable: No C++ compiler, or the build failed.
    """
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None and shutil.which("g++") is None:
        raise KernelUnavailable(
            f"no C++ compiler found (looked for {cxx!r} and 'g++'); install gcc/g++ to build "
            f"{what}, or {fallback}"
        )
    from torch.utils.cpp_extension import load

    # one folder per content of the sources and flags: checkouts with different sources
    # (git worktrees, branches) never rebuild over each other's library while it is loaded
    files = source if isinstance(source, list) else [source]
    digest = hashlib.sha1(repr((openmp, extra_cflags)).encode())
    for f in files:
        digest.update(Path(f).read_bytes())
    build_dir = extension_dir(name) / digest.hexdigest()[:10]
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        return load(
            name=f"minirepro_{name}",
            sources=[str(p) for p in files],
            extra_cflags=FLAGS + (["-fopenmp"] if openmp else []) + list(extra_cflags or []),
            extra_ldflags=["-fopenmp"] if openmp else [],
            build_directory=str(build_dir),
            verbose=verbose,
        )
    except Exception as exc:  # compiler errors surface as RuntimeError/CalledProcessError
        raise KernelUnavailable(f"building {what} failed: {exc}") from exc
