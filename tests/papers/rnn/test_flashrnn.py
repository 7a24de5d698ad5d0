"""flashrnn against the PyPI reference (backend="vanilla"), our loop, and torch.nn.LSTM."""

import pytest
import torch
from torch.testing import assert_close

from minirepro.papers.rnn import FUNCTIONS, flashrnn
from minirepro.papers.rnn.functions import cell_spec

FNS = list(FUNCTIONS)


def _inputs(function, B, T, N, D, *, with_states, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    s = cell_spec(function)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    Wx = rnd(B, T, s.n_gates_w, N, D)
    R = rnd(s.n_gates_r, N, D, D, scale=D**-0.5)
    b = rnd(s.n_gates_b, N, D)
    states = None
    if with_states:
        st = torch.randn(s.n_states, B, 1, N, D, generator=g, dtype=dtype)
        if function == "slstm":  # n >= 1 as after any step, m of moderate size
            st[2] = st[2].abs() + 1
        states = st.requires_grad_()
    return Wx, R, b, states


def _run(fn, inputs, seed=1):
    """Outputs, last states and gradients of a random linear loss on both."""
    Wx, R, b, states = inputs
    out, last = fn(Wx, R, b, states)
    g = torch.Generator().manual_seed(seed)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum() + (
        last * torch.randn(last.shape, generator=g, dtype=out.dtype)
    ).sum()
    leaves = [t for t in (Wx, R, b, states) if t is not None]
    return [out, last, *torch.autograd.grad(loss, leaves)]


def _assert_all_close(got, want, tol):
    names = ["out", "last", "dWx", "dR", "db", "dstates"]
    for name, a, e in zip(names, got, want):
        assert_close(a, e, rtol=tol, atol=tol, msg=lambda m, n=name: f"{n}: {m}")


# (B, T, N, D, with_states), odd sizes included; zero initial states take sLSTM's first-step rule
CASES = [(2, 5, 1, 8, False), (3, 17, 2, 16, True), (4, 9, 3, 24, False), (4, 9, 3, 24, True)]


@pytest.mark.parametrize("function", FNS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:4])) + f"-{c[4]}")
def test_cpu_matches_pypi_vanilla(cpu_ext, function, case):
    flashrnn_ref = pytest.importorskip("flashrnn").flashrnn
    *shape, with_states = case
    inputs = _inputs(function, *shape, with_states=with_states, seed=sum(shape))

    def vanilla(Wx, R, b, st):
        return flashrnn_ref(Wx, R, b, st, function=function, backend="vanilla", dtype="float32")

    want = _run(vanilla, inputs)
    for backend in ("cpu", "reference"):
        got = _run(lambda *a, be=backend: flashrnn(*a, function=function, backend=be), inputs)
        _assert_all_close(got, want, 1e-5)


@pytest.mark.parametrize("function", FNS)
@pytest.mark.parametrize("tiles", [(1, 1), (2, 1), (3, 2)])
def test_tilings_agree(cpu_ext, function, tiles):
    """Every (batch tile, head group) split gives the same answer."""
    inputs = _inputs(function, 5, 7, 2, 16, with_states=True)
    want = _run(lambda *a: flashrnn(*a, function=function, backend="reference"), inputs)
    bt, hg = tiles
    got = _run(
        lambda *a: flashrnn(*a, function=function, backend="cpu", batch_tile=bt, head_group=hg),
        inputs,
    )
    _assert_all_close(got, want, 1e-5)


@pytest.mark.parametrize("function", FNS)
def test_clipping_matches_reference(cpu_ext, function):
    inputs = _inputs(function, 3, 11, 2, 8, with_states=True)
    kw = dict(function=function, forward_clipval=0.3, gradient_recurrent_clipval=0.05)
    want = _run(lambda *a: flashrnn(*a, backend="reference", **kw), inputs)
    got = _run(lambda *a: flashrnn(*a, backend="cpu", **kw), inputs)
    _assert_all_close(got, want, 1e-5)
    plain = _run(lambda *a: flashrnn(*a, function=function, backend="cpu"), inputs)
    assert float(got[0][0].detach().abs().max()) <= 0.3 + 1e-7
    assert not torch.allclose(plain[3], got[3])  # the clipping did something


@pytest.mark.parametrize("function", FNS)
def test_gradcheck_float64(cpu_ext, function):
    Wx, R, b, st = _inputs(function, 2, 3, 2, 4, with_states=True, dtype=torch.float64)

    def f(Wx, R, b, st):
        out, last = flashrnn(Wx, R, b, st, function=function, backend="cpu")
        return out, last

    assert torch.autograd.gradcheck(f, (Wx, R, b, st), eps=1e-6, atol=1e-5)


def test_one_head_lstm_equals_torch_lstm(cpu_ext):
    torch.manual_seed(0)
    B, T, In, H = 3, 13, 10, 16
    lstm = torch.nn.LSTM(In, H, batch_first=True)
    x = torch.randn(B, T, In, requires_grad=True)
    h0, c0 = torch.randn(1, B, H), torch.randn(1, B, H)
    want, (hT, cT) = lstm(x, (h0, c0))
    # torch's gate order i, f, g, o is ours i, f, z, o; weight_hh (4H, H) = R (4, 1, H, H)
    Wx = (x @ lstm.weight_ih_l0.T).view(B, T, 4, 1, H)
    R = lstm.weight_hh_l0.view(4, 1, H, H)
    b = (lstm.bias_ih_l0 + lstm.bias_hh_l0).view(4, 1, H)
    states = torch.stack([h0, c0]).view(2, B, 1, 1, H)
    out, last = flashrnn(Wx, R, b, states, "lstm", backend="cpu")
    assert_close(out[0, :, :, 0], want, rtol=1e-5, atol=1e-5)
    assert_close(last[0, :, 0, 0], hT[0], rtol=1e-5, atol=1e-5)
    assert_close(last[1, :, 0, 0], cT[0], rtol=1e-5, atol=1e-5)
    g_ours = torch.autograd.grad(out[0].pow(2).sum(), [x, lstm.weight_hh_l0])
    g_torch = torch.autograd.grad(want.pow(2).sum(), [x, lstm.weight_hh_l0])
    for a, e in zip(g_ours, g_torch):
        assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_shape_errors():
    Wx, R, b, _ = _inputs("lstm", 2, 3, 1, 4, with_states=False)
    with pytest.raises(ValueError, match="R must have shape"):
        flashrnn(Wx, R[:3], b, function="lstm", backend="reference")
    with pytest.raises(ValueError, match="unknown RNN function"):
        flashrnn(Wx, R, b, function="rnn", backend="reference")
    with pytest.raises(ValueError, match="unknown backend"):
        flashrnn(Wx, R, b, function="lstm", backend="cuda")


def test_no_compiler_falls_back(monkeypatch):
    import minirepro.papers.rnn.dispatch as fr
    from minirepro.papers.rnn.cpu import CpuKernelUnavailable

    def fail():
        raise CpuKernelUnavailable("no C++ compiler found")

    monkeypatch.setattr(fr, "load_extension", fail)
    Wx, R, b, _ = _inputs("elman", 2, 3, 1, 4, with_states=False)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler found"):
        out, _ = fr.flashrnn(Wx, R, b, function="elman")
    assert out.shape == (1, 2, 3, 1, 4)


def test_output_buffers_are_reused_only_when_free(cpu_ext):
    """The kernel's buffer pool (outputs above 4 MiB) never hands out memory still in use."""
    a = _inputs("lstm", 8, 512, 4, 64, with_states=False, seed=3)
    b = _inputs("lstm", 8, 512, 4, 64, with_states=False, seed=4)
    with torch.no_grad():
        out_a, _ = flashrnn(*a[:3], function="lstm", backend="cpu")
        keep = out_a.clone()
        out_b, _ = flashrnn(*b[:3], function="lstm", backend="cpu")  # out_a is alive
        assert out_b.data_ptr() != out_a.data_ptr()
        assert torch.equal(out_a, keep)
        view = out_b[0, :2]  # a view keeps the storage alive
        ptr_b = out_b.data_ptr()
        del out_b
        out_c, _ = flashrnn(*a[:3], function="lstm", backend="cpu")
        assert out_c.data_ptr() != ptr_b and out_c.data_ptr() != out_a.data_ptr()
        del view
        ptr_a = out_a.data_ptr()
        del out_a
        out_d, _ = flashrnn(*b[:3], function="lstm", backend="cpu")
        assert out_d.data_ptr() in (ptr_a, ptr_b)  # a freed buffer came back
        assert torch.equal(out_c, keep)
