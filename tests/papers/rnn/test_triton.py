"""The Triton backend under TRITON_INTERPRET=1, against PyPI flashrnn's vanilla loop, our C++
kernel and the reference loop: outputs, last states and every gradient. Tiny shapes (the
interpreter runs each program in Python). The interpreter flag holds for this module only
(tests/conftest.py's `interpreted_triton_for`), not for the pytest process."""

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install 'triton>=3.4,<3.9')")

from minirepro.papers.rnn import FUNCTIONS, flashrnn  # noqa: E402
from minirepro.papers.rnn.constrint import check, solve  # noqa: E402
from minirepro.papers.rnn.tiling import (  # noqa: E402
    GpuLimits,
    triton_constraints,
    triton_tiles,
)

from .test_flashrnn import _assert_all_close, _inputs, _run  # noqa: E402

pytestmark = [pytest.mark.triton, pytest.mark.usefixtures("interpreted_triton")]


@pytest.fixture(scope="module")
def interpreted_triton(interpreted_triton_for):
    with interpreted_triton_for("minirepro.papers.rnn.triton_kernel"):
        yield


FNS = list(FUNCTIONS)
# (B, T, N, D, with_states): D below the 16 of tl.dot and not a power of two (padding),
# B = 17 gives two batch tiles of 16 (dR and db summed over tiles)
SHAPES = [(2, 5, 2, 16, False), (3, 6, 1, 8, True), (17, 4, 2, 24, True)]


def _triton(function, **kw):
    return lambda *a: flashrnn(*a, function=function, backend="triton", **kw)


@pytest.mark.parametrize("function", FNS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:4])) + f"-{s[4]}")
def test_triton_matches_pypi_vanilla_and_cpu(cpu_ext, function, shape):
    flashrnn_ref = pytest.importorskip("flashrnn").flashrnn
    *dims, with_states = shape
    inputs = _inputs(function, *dims, with_states=with_states, seed=sum(dims))

    def vanilla(Wx, R, b, st):
        return flashrnn_ref(Wx, R, b, st, function=function, backend="vanilla", dtype="float32")

    got = _run(_triton(function), inputs)
    _assert_all_close(got, _run(vanilla, inputs), 1e-5)
    cpu = _run(lambda *a: flashrnn(*a, function=function, backend="cpu"), inputs)
    _assert_all_close(got, cpu, 1e-5)


@pytest.mark.parametrize("function", FNS)
def test_triton_clipping_matches_reference(function):
    inputs = _inputs(function, 3, 6, 2, 16, with_states=True, seed=7)
    kw = dict(forward_clipval=0.3, gradient_recurrent_clipval=0.05)
    want = _run(lambda *a: flashrnn(*a, function=function, backend="reference", **kw), inputs)
    got = _run(_triton(function, **kw), inputs)
    _assert_all_close(got, want, 1e-5)
    assert float(got[0][0].detach().abs().max()) <= 0.3 + 1e-7


def test_triton_forward_only_without_grad():
    Wx, R, b, st = (x.detach() for x in _inputs("slstm", 2, 5, 2, 16, with_states=True))
    out, last = flashrnn(Wx, R, b, st, "slstm", backend="triton")
    want, want_last = flashrnn(Wx, R, b, st, "slstm", backend="reference")
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, want_last, rtol=1e-5, atol=1e-5)


def test_triton_input_errors(monkeypatch):
    Wx, R, b, _ = _inputs("lstm", 2, 3, 1, 16, with_states=False)
    with pytest.raises(ValueError, match="float32 only"):
        flashrnn(Wx.double(), R.double(), b.double(), function="lstm", backend="triton")
    with pytest.raises(ValueError, match="clip values must be positive"):
        flashrnn(Wx, R, b, function="lstm", backend="triton", forward_clipval=-1.0)
    with pytest.raises(ValueError, match="do not fit the registers"):
        big = _inputs("lstm", 1, 1, 1, 256, with_states=False)
        flashrnn(*big[:3], function="lstm", backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        flashrnn(Wx, R, b, function="lstm", backend="triton")


@pytest.mark.parametrize("B,D,G,N", [(16, 64, 4, 4), (1000, 32, 3, 8), (5, 48, 1, 2)])
def test_triton_tiles_feasible(B, D, G, N):
    limits = GpuLimits()
    tiles = triton_tiles(B, D, G, N, limits)
    for name, backward in (("forward", False), ("backward", True)):
        cons, vs = triton_constraints(B, D, G, N, backward, limits)
        sol = solve(cons, vs)
        assert sol is not None and check(cons, sol)
        assert tiles[name] == {"block_b": sol["block_b"], "num_warps": sol["num_warps"]}
        assert sol["programs"] * sol["block_b"] >= N * B  # the grid covers the batch
        assert sol["num_warps"] * 32 * sol["regs_per_thread"] <= limits.regs_per_block
    assert tiles["forward"]["num_warps"] <= tiles["backward"]["num_warps"]  # dR in registers too
