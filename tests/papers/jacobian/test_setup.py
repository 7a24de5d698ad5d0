"""The reference's digits setup, training as a pure function, and subspace training."""

from functools import partial

import pytest
import torch

from minirepro.papers.jacobian import (
    MLP,
    FlatModel,
    OptimConfig,
    heldout_loss,
    load_digits_data,
    noise_inputs,
    shuffled_labels,
    train,
    train_subspace,
)
from minirepro.papers.jacobian.setup import lr_at


def test_reference_data_split_and_parameter_count():
    data = load_digits_data()
    assert data.x_train.shape == (1600, 64) and data.x_test.shape == (197, 64)
    assert 0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1
    assert data.n_batches == 25  # 25 epochs x 25 batches = the paper's 625 steps
    assert FlatModel(MLP(hidden=(64,))).n_params == 4810
    assert FlatModel(MLP(hidden=(32,))).n_params == 2410


def test_init_is_seeded_and_follows_flax_scales():
    a = FlatModel(MLP().init_(torch.Generator().manual_seed(3))).flat()
    b = FlatModel(MLP().init_(torch.Generator().manual_seed(3))).flat()
    c = FlatModel(MLP().init_(torch.Generator().manual_seed(4))).flat()
    assert torch.equal(a, b) and not torch.equal(a, c)
    w1 = a[: 64 * 64]
    assert w1.abs().max() <= 2 * (1 / 64) ** 0.5 / 0.8796 + 1e-6  # truncated at 2 std
    assert abs(float(w1.std()) - (1 / 64) ** 0.5) < 0.01  # LeCun: variance 1 / fan_in


def test_cosine_schedule_matches_optax():
    assert lr_at(0, 100, 0.1) == pytest.approx(0.1)
    assert lr_at(50, 100, 0.1) == pytest.approx(0.05)
    assert lr_at(100, 100, 0.1) == pytest.approx(0.0)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_training_is_deterministic_and_lowers_test_loss(opt):
    data = load_digits_data()
    fm = FlatModel(MLP(hidden=(16,)).init_(torch.Generator().manual_seed(0)))
    theta0 = fm.flat()
    cfg = OptimConfig(opt=opt, lr=0.1 if opt == "sgd" else 3e-3, epochs=3)
    a, b = train(theta0, data, fm.apply, cfg), train(theta0, data, fm.apply, cfg)
    assert torch.equal(a, b)
    # 75 steps: SGD momentum gets to ~0.3 nats, Adam at 3e-3 only to ~1.85 (from 2.42).
    assert heldout_loss(a, data, fm.apply) < 0.85 * heldout_loss(theta0, data, fm.apply)


def test_variants_change_only_what_they_claim():
    data = load_digits_data(n_train=128)
    s = shuffled_labels(data, seed=1)
    assert torch.equal(s.x_train, data.x_train) and not torch.equal(s.y_train, data.y_train)
    assert torch.equal(s.y_train.sort().values, data.y_train.sort().values)
    n = noise_inputs(data, seed=1)
    assert torch.equal(n.y_train, data.y_train) and not torch.equal(n.x_train, data.x_train)
    assert torch.equal(n.x_test, data.x_test)


@pytest.fixture(scope="module")
def small64():
    data = load_digits_data(n_train=64, batch_size=16, dtype=torch.float64)
    fm = FlatModel(MLP(hidden=(4,)).init_(torch.Generator().manual_seed(1)).double())
    return data, fm, OptimConfig(epochs=2)


@pytest.mark.parametrize("basis", ["identity", "random rotation"])
def test_subspace_training_with_full_basis_equals_unconstrained(small64, basis):
    data, fm, cfg = small64
    p = fm.n_params
    theta0 = fm.flat()
    if basis == "identity":
        q = torch.eye(p, dtype=torch.float64)
    else:
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
    full = train(theta0, data, fm.apply, cfg)
    sub = train_subspace(theta0, q, data, fm.apply, cfg)
    torch.testing.assert_close(sub, full, rtol=0, atol=1e-10)


def test_subspace_training_stays_in_its_subspace(small64):
    data, fm, cfg = small64
    p = fm.n_params
    theta0 = fm.flat()
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
    basis, rest = q[:, :20].T, q[:, 20:].T  # (20, P) allowed, (P-20, P) frozen
    final = train_subspace(theta0, basis, data, fm.apply, cfg)
    moved = final - theta0
    assert moved.norm() > 1e-3
    torch.testing.assert_close(rest @ moved, torch.zeros(p - 20, dtype=torch.float64))
    # Batched over bases with vmap (as the repro does) gives the same answer.
    batched = torch.func.vmap(partial(train_subspace, theta0, data=data, apply=fm.apply, cfg=cfg))(
        basis[None]
    )
    torch.testing.assert_close(batched[0], final)
