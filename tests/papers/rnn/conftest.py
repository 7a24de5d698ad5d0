"""Builds the C++ kernel once per test session (cached across sessions on disk)."""

import pytest


@pytest.fixture(scope="session")
def cpu_ext():
    from minirepro.papers.rnn.cpu import CpuKernelUnavailable, load_extension

    try:
        return load_extension()
    except CpuKernelUnavailable as exc:
        pytest.skip(str(exc))
