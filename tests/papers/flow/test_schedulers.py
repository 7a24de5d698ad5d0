"""Schedulers: derivatives, SNR inverse, agreement with flow_matching, re-scheduling."""

import pytest
import torch

from minirepro.papers.flow import (
    CondOTScheduler,
    CosineScheduler,
    LinearVPScheduler,
    PolynomialScheduler,
    RescheduledVelocity,
    VPScheduler,
)

ref = pytest.importorskip("flow_matching.path.scheduler")

PAIRS = [
    (CondOTScheduler(), lambda: ref.CondOTScheduler()),
    (PolynomialScheduler(2), lambda: ref.PolynomialConvexScheduler(2)),
    (PolynomialScheduler(3.5), lambda: ref.PolynomialConvexScheduler(3.5)),
    (VPScheduler(), lambda: ref.VPScheduler()),
    (VPScheduler(0.5, 10.0), lambda: ref.VPScheduler(0.5, 10.0)),
    (LinearVPScheduler(), lambda: ref.LinearVPScheduler()),
    (CosineScheduler(), lambda: ref.CosineScheduler()),
]
IDS = [repr(s) for s, _ in PAIRS]


def _times(n=257, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g, dtype=torch.float64) * 0.98 + 0.01


@pytest.mark.parametrize("sched", [s for s, _ in PAIRS], ids=IDS)
def test_derivatives_equal_autograd(sched):
    t = _times().requires_grad_(True)
    out = sched(t)
    (d_alpha,) = torch.autograd.grad(out.alpha_t.sum(), t, retain_graph=True)
    (d_sigma,) = torch.autograd.grad(out.sigma_t.sum(), t)
    torch.testing.assert_close(out.d_alpha_t, d_alpha, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.d_sigma_t, d_sigma, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sched", [s for s, _ in PAIRS], ids=IDS)
def test_boundary_values(sched):
    # Noise at t = 0 (VP only approximately: alpha_0 = exp(-T(0) / 2)), data at t = 1.
    out = sched(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert 0 <= out.alpha_t[0] < 0.1 and out.sigma_t[0] > 0.99
    assert out.alpha_t[1] == pytest.approx(1.0, abs=1e-12)
    assert out.sigma_t[1] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("sched", [s for s, _ in PAIRS], ids=IDS)
def test_snr_inverse_round_trips(sched):
    t = _times(seed=1)
    out = sched(t)
    torch.testing.assert_close(sched.snr_inverse(out.alpha_t / out.sigma_t), t, rtol=0, atol=1e-6)


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=IDS)
def test_equals_reference(ours, theirs):
    t = _times(seed=2)
    a, b = ours(t), theirs()(t)
    for k in ("alpha_t", "sigma_t", "d_alpha_t", "d_sigma_t"):
        torch.testing.assert_close(getattr(a, k), getattr(b, k), rtol=1e-5, atol=1e-5)
    snr = torch.rand(64, dtype=torch.float64) * 20 + 0.01
    torch.testing.assert_close(
        ours.snr_inverse(snr), theirs().snr_inverse(snr), rtol=1e-5, atol=1e-5
    )


def _gaussian_velocity(sched, mu, s):
    """The exact marginal velocity of an affine path from N(0, I) to N(mu, s^2 I)."""

    def u(x, t):
        o = sched(torch.as_tensor(t, dtype=x.dtype))
        var = o.alpha_t**2 * s**2 + o.sigma_t**2
        r = x - o.alpha_t * mu
        e_x1 = mu + o.alpha_t * s**2 / var * r
        e_x0 = o.sigma_t / var * r
        return o.d_alpha_t * e_x1 + o.d_sigma_t * e_x0

    return u


@pytest.mark.parametrize(
    "old,new",
    [
        (CondOTScheduler(), CosineScheduler()),
        (CosineScheduler(), VPScheduler()),
        (LinearVPScheduler(), PolynomialScheduler(2)),
        (VPScheduler(), CondOTScheduler()),
    ],
    ids=lambda s: repr(s),
)
def test_rescheduling_gives_the_new_schedulers_marginal_velocity(old, new):
    # A model trained with `old` and transformed to `new` must equal the field `new` would
    # have been trained to: here both are known in closed form (Gaussian data).
    mu, s = torch.tensor([1.5, -0.5], dtype=torch.float64), 0.3
    model = _gaussian_velocity(old, mu, s)
    moved = RescheduledVelocity(lambda x, t: model(x, t[:, None] if t.ndim else t), old, new)
    x = torch.randn(50, 2, dtype=torch.float64)
    for r in (0.1, 0.4, 0.7, 0.95):
        t = torch.full((50,), r, dtype=torch.float64)
        torch.testing.assert_close(
            moved(x, t), _gaussian_velocity(new, mu, s)(x, t[:, None]), rtol=1e-6, atol=1e-6
        )


def test_rescheduling_equals_reference(tiny_velocity):
    from flow_matching.path.scheduler import ScheduleTransformedModel

    model = tiny_velocity(3).double()
    ours = RescheduledVelocity(model, CondOTScheduler(), CosineScheduler())
    theirs = ScheduleTransformedModel(model, ref.CondOTScheduler(), ref.CosineScheduler())
    x = torch.randn(20, 3, dtype=torch.float64)
    for r in (0.2, 0.5, 0.8):
        tt = torch.tensor(r, dtype=torch.float64)
        torch.testing.assert_close(ours(x, tt), theirs(x=x, t=tt), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "old,new", [(CondOTScheduler(), CosineScheduler()), (CosineScheduler(), CondOTScheduler())]
)
def test_rescheduling_is_finite_at_the_end_points(old, new):
    mu, s = torch.tensor([1.0, -1.0]), 0.5
    moved = RescheduledVelocity(lambda x, t: _gaussian_velocity(old, mu, s)(x, t), old, new)
    x = torch.randn(10, 2)
    for r in (0.0, 1.0):
        assert torch.isfinite(moved(x, torch.tensor(r))).all()
