"""The machine and the code a number was measured with: CPU, library versions, git state.

Used by `RunDir` (env.json) and by the benchmarks (`bench.machine_info`). No hostnames or
user names are recorded, so run folders can be shared as they are.
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

_PACKAGE_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class GitInfo:
    """The git commit the code ran from.

    Attributes:
        sha: Full commit hash, or None outside a git work tree (an installed wheel).
        dirty: True if tracked files differ from the commit; None when unknown.
    """

    sha: str | None
    dirty: bool | None

    @property
    def short(self) -> str | None:
        """The first seven hex digits of the commit, or None."""
        return self.sha[:7] if self.sha else None


def _git(args: list[str], cwd: Path) -> str | None:
    """Runs a read-only git command; returns its stdout, or None if git is unavailable."""
    try:
        proc = subprocess.run(
            # --no-optional-locks: `status` must not refresh the index of a repo in use.
            ["git", "--no-optional-locks", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_info(path: str | os.PathLike[str] | None = None) -> GitInfo:
    """Returns the commit and dirty flag of the git work tree holding `path`.

    Args:
        path: A folder inside the work tree; defaults to the minirepro package itself, so
            the sha names the code that ran, whatever the current directory is.

    Returns:
        A `GitInfo`; both fields are None when there is no git or no repository.
    """
    cwd = Path(path) if path is not None else _PACKAGE_DIR
    sha = _git(["rev-parse", "HEAD"], cwd)
    if sha is None:
        return GitInfo(sha=None, dirty=None)
    # Untracked files (scratch notebooks, runs/) do not make the code that ran different.
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return GitInfo(sha=sha, dirty=None if status is None else bool(status))


def utc_stamp(now: datetime | None = None) -> str:
    """Returns a UTC time as `YYYYmmddTHHMMSSZ`, which sorts in time order as text."""
    now = now or datetime.now(timezone.utc)
    return now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def cpu_model() -> str:
    """Returns the CPU model name, from /proc/cpuinfo where there is one."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Hardware", "cpu model") and value.strip():
            return value.strip()
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            return out
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """Returns the number of cores this process may run on (affinity, not the host's total)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def torch_info() -> dict[str, Any]:
    """Returns torch's version, thread count and GPU, or `{"torch": None}` without torch."""
    try:
        import torch
    except ImportError:
        return {"torch": None}
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
    }


def environment(git: GitInfo | None = None) -> dict[str, Any]:
    """Returns what env.json records: versions, platform, CPU, cores, git state.

    Args:
        git: The git state if the caller already has it; looked up otherwise.

    Returns:
        A JSON-ready dict without hostname or user name.
    """
    git = git or git_info()
    try:
        import numpy

        numpy_version: str | None = numpy.__version__
    except ImportError:
        numpy_version = None
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        **torch_info(),
        "numpy": numpy_version,
        "git_sha": git.sha,
        "git_dirty": git.dirty,
    }
