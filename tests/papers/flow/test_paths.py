"""Affine paths and the velocity / x_1 / epsilon conversions."""

import pytest
import torch

from minirepro.papers.flow import (
    AffinePath,
    CondOTPath,
    CondOTScheduler,
    CosineScheduler,
    LinearVPScheduler,
    PolynomialScheduler,
    VPScheduler,
)

ref_path = pytest.importorskip("flow_matching.path")
ref_sched = pytest.importorskip("flow_matching.path.scheduler")

PAIRS = [
    (CondOTScheduler(), ref_sched.CondOTScheduler()),
    (PolynomialScheduler(2), ref_sched.PolynomialConvexScheduler(2)),
    (VPScheduler(), ref_sched.VPScheduler()),
    (LinearVPScheduler(), ref_sched.LinearVPScheduler()),
    (CosineScheduler(), ref_sched.CosineScheduler()),
]
CONVERSIONS = [
    "target_to_velocity",
    "epsilon_to_velocity",
    "velocity_to_target",
    "velocity_to_epsilon",
    "epsilon_to_target",
    "target_to_epsilon",
]


def _draw(shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g, dtype=dtype)
    x1 = torch.randn(shape, generator=g, dtype=dtype) * 2 + 1
    t = torch.rand(shape[0], generator=g, dtype=dtype) * 0.9 + 0.05
    return x0, x1, t


@pytest.mark.parametrize("shape", [(64, 2), (7, 3, 5), (5, 1, 4, 4)])
@pytest.mark.parametrize("ours,theirs", PAIRS, ids=[repr(s) for s, _ in PAIRS])
def test_sample_and_conversions_equal_reference(ours, theirs, shape):
    x0, x1, t = _draw(shape, seed=len(shape))
    a = AffinePath(ours).sample(x0, x1, t)
    b = ref_path.AffineProbPath(theirs).sample(x_0=x0, x_1=x1, t=t)
    torch.testing.assert_close(a.x_t, b.x_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.dx_t, b.dx_t, rtol=1e-5, atol=1e-5)
    t_b = t.view(-1, *([1] * (len(shape) - 1)))  # the reference wants t broadcastable
    pred = torch.randn(shape, dtype=torch.float64)
    for name in CONVERSIONS:
        mine = getattr(AffinePath(ours), name)(pred, a.x_t, t)
        theirs_ = getattr(ref_path.AffineProbPath(theirs), name)(pred, a.x_t, t_b)
        torch.testing.assert_close(mine, theirs_, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("sched", [s for s, _ in PAIRS], ids=[repr(s) for s, _ in PAIRS])
def test_conversions_are_consistent_with_the_conditional_path(sched):
    path = AffinePath(sched)
    x0, x1, t = _draw((32, 3), seed=5)
    s = path.sample(x0, x1, t)
    # Given the true x_1 or epsilon, each conversion recovers the conditional quantities.
    torch.testing.assert_close(path.target_to_velocity(x1, s.x_t, t), s.dx_t)
    torch.testing.assert_close(path.epsilon_to_velocity(x0, s.x_t, t), s.dx_t)
    torch.testing.assert_close(path.velocity_to_target(s.dx_t, s.x_t, t), x1)
    torch.testing.assert_close(path.velocity_to_epsilon(s.dx_t, s.x_t, t), x0)
    torch.testing.assert_close(path.epsilon_to_target(x0, s.x_t, t), x1)
    torch.testing.assert_close(path.target_to_epsilon(x1, s.x_t, t), x0)


def test_condot_path_is_the_affine_path_of_condot():
    x0, x1, t = _draw((40, 2), seed=9)
    a, b = CondOTPath().sample(x0, x1, t), AffinePath(CondOTScheduler()).sample(x0, x1, t)
    torch.testing.assert_close(a.x_t, b.x_t)
    torch.testing.assert_close(a.dx_t, b.dx_t)


def test_sample_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        CondOTPath().sample(torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(3))
