"""The training Jacobian: forward mode against reverse mode, finite differences and closed forms."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch.func import jacrev

from minirepro.papers.jacobian import (
    MLP,
    FlatModel,
    MLPPushforward,
    OptimConfig,
    chunk_size_for,
    gelu_tanh_derivatives,
    load_digits_data,
    process_pool,
    svd64,
    train,
    training_jacobian,
)


@pytest.fixture(scope="module")
def tiny():
    """A 64 -> 3 -> 10 MLP (235 parameters) trained for 3 steps of 8 images, in float64."""
    data = load_digits_data(n_train=24, batch_size=8, dtype=torch.float64)
    model = MLP(hidden=(3,)).init_(torch.Generator().manual_seed(0)).double()
    fm = FlatModel(model)
    return data, fm


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("chunk_size", [None, 100])  # 100: 3 chunks, the last one short
def test_forward_mode_matches_reverse_mode_and_finite_differences(tiny, opt, chunk_size):
    data, fm = tiny
    cfg = OptimConfig(opt=opt, lr=0.1 if opt == "sgd" else 3e-3, epochs=1)
    train_fn = partial(train, data=data, apply=fm.apply, cfg=cfg)
    # A fresh random init each time (not the module's), so nothing hinges on one point.
    theta0 = fm.flat() + 0.1 * torch.randn(fm.n_params, dtype=torch.float64)

    jac = training_jacobian(train_fn, theta0, chunk_size=chunk_size)
    assert jac.shape == (fm.n_params, fm.n_params)
    torch.testing.assert_close(jac, jacrev(train_fn)(theta0), rtol=0, atol=1e-6)

    cols = torch.randperm(fm.n_params)[:6]
    h = 1e-6  # Adam's curvature makes the O(h^2) error of h = 1e-5 reach ~1e-6
    for j in cols:
        e = torch.zeros_like(theta0)
        e[j] = h
        fd = (train_fn(theta0 + e) - train_fn(theta0 - e)) / (2 * h)  # O(h^2) error
        torch.testing.assert_close(jac[:, j], fd, rtol=0, atol=1e-6)


def test_training_changes_the_jacobian_away_from_identity(tiny):
    data, fm = tiny
    train_fn = partial(train, data=data, apply=fm.apply, cfg=OptimConfig(epochs=2))
    S = svd64(training_jacobian(train_fn, fm.flat())).S
    assert S.dtype == torch.float64
    assert S[0] > 1.01 and S[-1] < 0.99  # chaotic and stable directions both exist


def _quadratic(p: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(p, p, generator=g, dtype=torch.float64)
    h = a @ a.T / p + 0.1 * torch.eye(p, dtype=torch.float64)  # SPD Hessian
    b = torch.randn(p, generator=g, dtype=torch.float64)
    return h, b


@pytest.mark.parametrize("steps", [1, 7])
def test_gradient_descent_on_quadratic_matches_closed_form(steps):
    """GD on L = theta^T H theta / 2 - b^T theta: J = prod_t (I - eta_t H) (transposed)."""
    p = 12
    h, b = _quadratic(p, seed=steps)
    etas = [0.3 / (1 + t) for t in range(steps)]  # a varying step size: order matters

    def gd(theta):
        for eta in etas:
            theta = theta - eta * (h @ theta - b)
        return theta

    theta0 = torch.randn(p, dtype=torch.float64)
    expected = torch.eye(p, dtype=torch.float64)
    for eta in etas:  # d theta_{t+1} / d theta_0 = (I - eta_t H) d theta_t / d theta_0
        expected = (torch.eye(p, dtype=torch.float64) - eta * h) @ expected
    jac = training_jacobian(gd, theta0, chunk_size=5)
    torch.testing.assert_close(jac, expected, rtol=0, atol=1e-12)
    if steps == 1:  # one step: (I - eta H)^T, and H is symmetric
        torch.testing.assert_close(jac, (torch.eye(p, dtype=torch.float64) - etas[0] * h).T)


def test_momentum_training_on_quadratic_matches_closed_form(tiny):
    """Our `train` (SGD momentum, cosine lr) with a quadratic gradient: a linear recursion
    [theta; m]' = A_t [theta; m] whose top-left block of prod_t A_t is the Jacobian."""
    data, _ = tiny  # only sets the step count: 3 batches x 2 epochs
    p = 9
    h, b = _quadratic(p, seed=3)
    cfg = OptimConfig(opt="sgd", lr=0.2, momentum=0.9, epochs=2)
    train_fn = partial(train, data=data, apply=None, cfg=cfg, grad_fn=lambda th, x, y: h @ th - b)
    jac = training_jacobian(train_fn, torch.randn(p, dtype=torch.float64))

    from minirepro.papers.jacobian.setup import lr_at

    eye, zero = torch.eye(p, dtype=torch.float64), torch.zeros(p, p, dtype=torch.float64)
    total = cfg.epochs * data.n_batches
    prod = torch.eye(2 * p, dtype=torch.float64)
    for t in range(total):
        lr = lr_at(t, total, cfg.lr)
        # m' = H theta - b + mu m ; theta' = theta - lr m'
        a_t = torch.cat(
            [
                torch.cat([eye - lr * h, -lr * cfg.momentum * eye], 1),
                torch.cat([h, cfg.momentum * eye], 1),
            ]
        )
        prod = a_t @ prod
    torch.testing.assert_close(jac, prod[:p, :p], rtol=0, atol=1e-12)
    assert not torch.allclose(prod[:p, :p], zero)


def test_chunk_size_respects_budget_and_bounds():
    assert chunk_size_for(5000, bytes_per_tangent=1 << 20, memory_budget=100 << 20) == 100
    assert chunk_size_for(10, bytes_per_tangent=1, memory_budget=1 << 30) == 10
    assert chunk_size_for(10, bytes_per_tangent=1 << 40, memory_budget=1) == 1


class _Stop(Exception):
    pass


def test_checkpointed_jacobian_resumes_after_interruption(tiny, tmp_path):
    data, fm = tiny
    calls = []

    def train_fn(theta):
        calls.append(1)
        return train(theta, data, fm.apply, OptimConfig(epochs=1))

    theta0 = fm.flat()
    reference = training_jacobian(train_fn, theta0, chunk_size=40)  # 235 -> 6 chunks

    def stop_after(k):
        def on_chunk(i, n):
            assert n == 6
            if i + 1 == k:
                raise _Stop

        return on_chunk

    folder = tmp_path / "ckpt"
    with pytest.raises(_Stop):
        training_jacobian(train_fn, theta0, chunk_size=40, checkpoint_dir=folder,
                          on_chunk=stop_after(2))  # fmt: skip
    assert sorted(p.name for p in folder.glob("chunk_*.pt")) == ["chunk_00000.pt", "chunk_00001.pt"]

    calls.clear()
    seen = []
    resumed = training_jacobian(
        train_fn, theta0, chunk_size=40, checkpoint_dir=folder,
        on_chunk=lambda i, n: seen.append(i),
    )  # fmt: skip
    # One plain call for the output size, then only the 4 missing chunks are pushed.
    assert len(calls) == 1 + 4
    assert seen == list(range(6))
    torch.testing.assert_close(resumed, reference, rtol=0, atol=0)

    # A folder of another computation is refused rather than silently mixed in.
    with pytest.raises(ValueError, match="another computation"):
        training_jacobian(train_fn, theta0 + 1, chunk_size=40, checkpoint_dir=folder)


def test_worker_processes_give_the_same_jacobian(tiny, tmp_path):
    data, fm = tiny
    cfg = OptimConfig(epochs=1)
    train_fn = partial(train, data=data, apply=fm.apply, cfg=cfg)
    theta0 = fm.flat()
    reference = training_jacobian(train_fn, theta0, chunk_size=60)
    seen = []
    with process_pool(2) as pool:  # as the repro: the fast pushforward, pickled to workers
        parallel = training_jacobian(
            train_fn, theta0, chunk_size=60, checkpoint_dir=tmp_path, executor=pool,
            on_chunk=lambda i, n: seen.append(i), pushforward=MLPPushforward(data, 3, cfg),
        )  # fmt: skip
    assert sorted(seen) == [0, 1, 2, 3]
    assert len(list(tmp_path.glob("chunk_*.pt"))) == 4
    torch.testing.assert_close(parallel, reference, rtol=0, atol=1e-12)


def test_gelu_derivatives_match_autograd():
    a = torch.linspace(-6, 6, 101, dtype=torch.float64, requires_grad=True)
    d1, d2 = gelu_tanh_derivatives(a.detach())
    (g1,) = torch.autograd.grad(F.gelu(a, approximate="tanh").sum(), a, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), a)
    torch.testing.assert_close(d1, g1.detach())
    torch.testing.assert_close(d2, g2)


@pytest.mark.parametrize("width", [3, 7])
def test_hand_derived_pushforward_matches_jvp_and_reverse_mode(width):
    data = load_digits_data(n_train=40, batch_size=8, dtype=torch.float64)
    fm = FlatModel(MLP(hidden=(width,)).init_(torch.Generator().manual_seed(width)).double())
    cfg = OptimConfig(lr=0.2, momentum=0.8, epochs=2)  # 10 steps
    train_fn = partial(train, data=data, apply=fm.apply, cfg=cfg)
    theta0 = fm.flat()
    fast = training_jacobian(train_fn, theta0, pushforward=MLPPushforward(data, width, cfg))
    torch.testing.assert_close(fast, training_jacobian(train_fn, theta0), rtol=0, atol=1e-10)
    torch.testing.assert_close(fast, jacrev(train_fn)(theta0), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="SGD"):
        MLPPushforward(data, width, OptimConfig(opt="adam"))
