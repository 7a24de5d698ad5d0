"""Clipping as flashrnn defines it, dtypes, backend errors, the buffer pool, OpenMP threads and
the one table of cell definitions."""

import pytest
import torch
from torch.testing import assert_close

from minirepro.papers.rnn import FUNCTIONS, flashrnn
from minirepro.papers.rnn.functions import CellSpec

from .test_flashrnn import _assert_all_close, _inputs, _run

FNS = list(FUNCTIONS)


class _StraightThroughClamp(torch.autograd.Function):
    """flashrnn's CUDA kernels clamp y in the forward; their backward ignores the clamp."""

    @staticmethod
    def forward(ctx, y, v):
        return y.clamp(-v, v)

    @staticmethod
    def backward(ctx, g):
        return g, None


def _flashrnn_clipped_vanilla(monkeypatch, function, v):
    """flashrnn's own vanilla loop and cell functions, y clamped after each step as its CUDA
    kernels do with `forward_clipval` (the vanilla backends ignore the option)."""
    fr = pytest.importorskip("flashrnn")
    from flashrnn.flashrnn.vanilla import flashrnn_pointwise_function_registry as registry

    cell = registry[function]

    def clipped(Wx_t, Ry, b, states, constants):
        new, gates = cell(Wx_t, Ry, b, states, constants=constants)  # new: (B, S, N, D)
        y = _StraightThroughClamp.apply(new[:, 0], v)
        return torch.cat([y[:, None], new[:, 1:]], dim=1), gates

    monkeypatch.setitem(registry, function, clipped)
    return lambda Wx, R, b, st: fr.flashrnn(
        Wx, R, b, st, function=function, backend="vanilla", dtype="float32"
    )


@pytest.mark.parametrize("function", FNS)
def test_forward_clip_matches_flashrnn(cpu_ext, monkeypatch, function):
    """forward_clipval: y clamped in the output and the recurrence, gradient straight through."""
    inputs = _inputs(function, 3, 9, 2, 8, with_states=True, seed=11)
    want = _run(_flashrnn_clipped_vanilla(monkeypatch, function, 0.3), inputs)
    for backend in ("cpu", "reference"):
        got = _run(
            lambda *a, be=backend: flashrnn(*a, function=function, backend=be, forward_clipval=0.3),
            inputs,
        )
        _assert_all_close(got, want, 1e-5)
    assert float(want[0][0].detach().abs().max()) == pytest.approx(0.3)  # the clip was active


@pytest.mark.parametrize("function", FNS)
def test_gradient_clip_spares_the_initial_state(cpu_ext, function):
    """flashrnn clips the gradient passed from step t to h_{t-1}; with one step there is none."""
    inputs = _inputs(function, 3, 1, 2, 8, with_states=True, seed=12)
    plain = _run(lambda *a: flashrnn(*a, function=function, backend="cpu"), inputs)
    for backend in ("cpu", "reference"):
        got = _run(
            lambda *a, be=backend: flashrnn(
                *a, function=function, backend=be, gradient_recurrent_clipval=1e-4
            ),
            inputs,
        )
        _assert_all_close(got, plain, 1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("function", ["lstm", "gru"])
def test_half_precision_inputs_run_the_kernel_in_fp32(cpu_ext, function, dtype):
    """backend='auto' (and 'cpu') on bf16/fp16: fp32 compute, outputs and gradients in dtype."""
    inputs = [
        x.detach().to(dtype).requires_grad_()
        for x in _inputs(function, 2, 6, 2, 16, with_states=True)
    ]

    def fp32_reference(*a):
        out, last = flashrnn(*(x.float() for x in a), function=function, backend="reference")
        return out.to(dtype), last.to(dtype)

    got = _run(lambda *a: flashrnn(*a, function=function), inputs)
    want = _run(fp32_reference, inputs)
    for a, e in zip(got, want):
        assert a.dtype == dtype
        assert_close(a, e, rtol=1e-2, atol=1e-2)


def test_wrong_backend_or_inputs_raise_value_errors(cpu_ext):
    Wx, R, b, st = _inputs("lstm", 2, 3, 1, 16, with_states=True)
    with pytest.raises(ValueError, match="float32 only"):
        flashrnn(Wx.bfloat16(), R.bfloat16(), b.bfloat16(), function="lstm", backend="triton")
    with pytest.raises(ValueError, match="R is torch.float64 .* Wx is torch.float32"):
        flashrnn(Wx, R.double(), b, function="lstm", backend="cpu")
    with pytest.raises(ValueError, match="floating-point"):
        flashrnn(Wx.long(), R, b, function="lstm", backend="cpu")
    with pytest.raises(ValueError, match="unknown backend 'vanilla'"):
        flashrnn(Wx, R, b, function="lstm", backend="vanilla")


def test_buffer_pool_limit_and_release(cpu_ext):
    from minirepro.papers.rnn.cpu import buffer_pool_stats, release_buffers, set_buffer_pool_limit

    Wx, R, b = (x.detach() for x in _inputs("lstm", 8, 512, 4, 64, with_states=False)[:3])
    limit = buffer_pool_stats().limit_bytes
    try:
        out, _ = flashrnn(Wx, R, b, function="lstm", backend="cpu")  # out: 16 MiB, pooled
        nbytes = out.numel() * out.element_size()
        stats = buffer_pool_stats()
        assert stats.held_bytes >= nbytes and stats.free_bytes == stats.held_bytes - nbytes
        assert release_buffers() == stats.free_bytes  # the live output stays tracked
        del out
        assert release_buffers() == nbytes
        assert buffer_pool_stats().held_bytes == 0
        set_buffer_pool_limit(nbytes - 1)  # too small for the output: nothing is kept
        out, _ = flashrnn(Wx, R, b, function="lstm", backend="cpu")
        assert buffer_pool_stats().held_bytes == 0
        with pytest.raises(ValueError, match=">= 0 bytes"):
            set_buffer_pool_limit(-1)
    finally:
        set_buffer_pool_limit(limit)


def test_threads_agree_with_one_thread(cpu_ext):
    """The answer does not depend on the thread count (with -fopenmp the work items run on
    torch's threads; `cpu.OPENMP` says whether the default build has it)."""
    from minirepro.papers.rnn.cpu import OPENMP

    assert cpu_ext.built_with_openmp() == OPENMP
    # B T N D^2 Gr = 2^27 FMAs: above the kernel's threshold for a parallel region
    inputs = _inputs("slstm", 8, 128, 4, 64, with_states=True, seed=5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(lambda *a: flashrnn(*a, function="slstm", backend="cpu", batch_tile=4), inputs)
        torch.set_num_threads(2)
        two = _run(lambda *a: flashrnn(*a, function="slstm", backend="cpu", batch_tile=4), inputs)
    finally:
        torch.set_num_threads(threads)
    _assert_all_close(two, one, 0.0)


def test_cell_table_drives_the_kernels(cpu_ext):
    from minirepro.papers.rnn.functions import cpp_defines

    assert cpp_defines() == [f"-DRNN_FN_{n.upper()}={s.kernel_id}" for n, s in FUNCTIONS.items()]
    assert sorted(s.kernel_id for s in FUNCTIONS.values()) == list(range(len(FUNCTIONS)))
    with pytest.raises(ValueError, match="prefix"):
        CellSpec("bad", ("a", "b"), ("b",), ("b", "a"), ("h",), 9)
    Wx, R, b, st = (x.detach() for x in _inputs("gru", 2, 3, 1, 8, with_states=True))
    wrong = FUNCTIONS["lstm"].kernel_args  # 4 input gates, but gru's Wx has 3
    with pytest.raises(RuntimeError, match="do not match the cell spec"):
        cpu_ext.forward(wrong, Wx, R.permute(1, 3, 0, 2).reshape(1, 8, 24).contiguous(),
                        b, st[:, :, 0], False, False, 0.0, 2, 1)  # fmt: skip
