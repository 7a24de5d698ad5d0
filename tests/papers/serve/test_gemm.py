"""The runner's projection GEMMs (packed kernel, oneDNN, F.linear) against torch's matmul in
float64."""

import pytest
import torch

from minirepro.papers.serve import gemm


@pytest.mark.parametrize("kind", ["packed", "onednn", "torch"])
@pytest.mark.parametrize(
    "M, N, K",
    [
        (1, 16, 8),
        (5, 33, 17),
        (6, 960, 576),
        (7, 50, 3),
        (13, 17, 1536),
        (48, 64, 64),
        (49, 31, 40),
        (130, 100, 24),
    ],
)
def test_linear_matches_float64_matmul(kernel, kind, M, N, K):
    g = torch.Generator().manual_seed(M * N + K)
    w, x = torch.randn(N, K, generator=g), torch.randn(M, K, generator=g)
    y = gemm.linear(x, gemm.pack(w, kind))
    assert y.shape == (M, N) and y.dtype == torch.float32
    ref = x.double() @ w.double().T
    torch.testing.assert_close(y.double(), ref, atol=1e-5 * K**0.5, rtol=1e-5)


def test_packed_kernel_takes_few_rows_and_onednn_many(kernel, monkeypatch):
    w = gemm.pack(torch.randn(40, 24), "packed")
    assert w.panels is not None and w.panels.shape == (3, 24, 16)
    calls = []
    real = kernel.packed_linear
    monkeypatch.setattr(
        gemm,
        "load_kernel",
        lambda: type("K", (), {"packed_linear": lambda *a: calls.append(1) or real(*a)}),
    )
    gemm.linear(torch.randn(gemm.SMALL_ROWS, 24), w)
    gemm.linear(torch.randn(gemm.SMALL_ROWS + 1, 24), w)
    assert len(calls) == 1


def test_no_rows_and_views(kernel):
    w = torch.randn(20, 12)
    for kind in ("packed", "onednn", "torch"):
        p = gemm.pack(w, kind)
        assert gemm.linear(torch.randn(0, 12), p).shape == (0, 20)
        x = torch.randn(12, 9).T  # not contiguous
        torch.testing.assert_close(gemm.linear(x, p), x @ w.T, atol=1e-5, rtol=1e-5)


def test_resolve_and_bad_input(kernel):
    w = torch.randn(4, 8)
    assert gemm.resolve_gemm("auto", w) == "packed"
    assert gemm.resolve_gemm("auto", w.double()) == "torch"
    with pytest.raises(ValueError, match="gemm must be"):
        gemm.resolve_gemm("blas", w)
    with pytest.raises(ValueError, match="float32"):
        gemm.resolve_gemm("packed", w.double())
    with pytest.raises(RuntimeError, match="features"):
        kernel.packed_linear(torch.randn(2, 9), kernel.pack_weight(w), 4)
    with pytest.raises(RuntimeError, match="panels"):
        kernel.packed_linear(torch.randn(2, 8), kernel.pack_weight(w), 40)
