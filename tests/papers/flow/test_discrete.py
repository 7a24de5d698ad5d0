"""Mixture paths, posterior -> velocity, generalized KL and the discrete Euler sampler."""

import pytest
import torch
from torch import nn

from minirepro.papers.flow import (
    CondOTScheduler,
    DiscreteEulerSolver,
    MixtureDiscretePath,
    PolynomialScheduler,
    generalized_kl,
)

ref_path = pytest.importorskip("flow_matching.path")
ref_sched = pytest.importorskip("flow_matching.path.scheduler")
ref_solver = pytest.importorskip("flow_matching.solver")
ref_loss = pytest.importorskip("flow_matching.loss")

K = 7


class TinyPosterior(nn.Module):
    """Random posterior logits (B, d, K) that depend on x and t."""

    def __init__(self, d: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Parameter(torch.randn(K, 8, generator=g))
        self.w = nn.Parameter(torch.randn(d * 8 + 1, d * K, generator=g) * 0.5)
        self.d = d

    def forward(self, x, t, **extras):
        h = torch.cat([self.emb[x].flatten(1), t.reshape(-1, 1).expand(x.shape[0], 1)], -1)
        return torch.tanh(h @ self.w).view(x.shape[0], self.d, K) * 3


class AsProbabilities(nn.Module):
    """The reference sampler wants probabilities, ours logits."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, t, **extras):
        return torch.softmax(self.model(x, t), -1)


def _tokens(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, K, shape, generator=g), torch.randint(0, K, shape, generator=g)


@pytest.mark.parametrize("shape", [(500, 3), (50, 2, 4)])
def test_path_sample_equals_reference(shape):
    x0, x1 = _tokens(shape, 0)
    t = torch.rand(shape[0])
    torch.manual_seed(1)
    ours = MixtureDiscretePath(PolynomialScheduler(2)).sample(x0, x1, t)
    torch.manual_seed(1)
    theirs = ref_path.MixtureDiscreteProbPath(ref_sched.PolynomialConvexScheduler(2)).sample(
        x0, x1, t
    )
    assert torch.equal(ours.x_t, theirs.x_t)


def test_path_marginal_is_the_mixture():
    x0, x1 = torch.zeros(20000, 1, dtype=torch.long), torch.ones(20000, 1, dtype=torch.long)
    t = torch.full((20000,), 0.6)
    x_t = (
        MixtureDiscretePath(PolynomialScheduler(2))
        .sample(x0, x1, t, generator=torch.Generator().manual_seed(0))
        .x_t
    )
    assert x_t.float().mean().item() == pytest.approx(0.36, abs=0.015)  # kappa = t^2


def test_posterior_to_velocity_equals_reference_and_conserves_mass():
    logits = torch.randn(30, 4, K)
    x_t = torch.randint(0, K, (30, 4))
    t = torch.rand(30) * 0.9
    ours = MixtureDiscretePath(CondOTScheduler()).posterior_to_velocity(logits, x_t, t)
    theirs = ref_path.MixtureDiscreteProbPath(ref_sched.CondOTScheduler()).posterior_to_velocity(
        logits, x_t, t
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.sum(-1), torch.zeros(30, 4), rtol=0, atol=1e-5)
    off_diagonal = ours.masked_fill(torch.nn.functional.one_hot(x_t, K).bool(), 0)
    assert (off_diagonal >= 0).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_generalized_kl_equals_reference(reduction):
    logits = torch.randn(40, 3, K, requires_grad=True)
    x1, x_t = _tokens((40, 3), 2)
    x_t[:20] = x1[:20]  # some coordinates already at their target
    t = torch.rand(40) * 0.9
    path = MixtureDiscretePath(PolynomialScheduler(2))
    ours = generalized_kl(logits, x1, x_t, t, path, reduction=reduction)
    ref = ref_loss.MixturePathGeneralizedKL(
        ref_path.MixtureDiscreteProbPath(ref_sched.PolynomialConvexScheduler(2)),
        reduction=reduction,
    )
    theirs = ref(logits, x1, x_t, t)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    g1 = torch.autograd.grad(ours.sum(), logits)[0]
    g2 = torch.autograd.grad(theirs.sum(), logits)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("div_free", [0.0, 2.0])
@pytest.mark.parametrize(
    "grid", [{"step_size": 0.05}, {"step_size": None, "time_grid": torch.linspace(0, 1, 9)}]
)
def test_euler_sampler_equals_reference(div_free, grid):
    model = TinyPosterior(3, seed=1)
    x_init = torch.randint(0, K, (400, 3), generator=torch.Generator().manual_seed(0))
    p0 = torch.full((K,), 1.0 / K)
    sched, ref_s = PolynomialScheduler(2), ref_sched.PolynomialConvexScheduler(2)
    kw = dict(grid)
    torch.manual_seed(5)
    ours = DiscreteEulerSolver(model, MixtureDiscretePath(sched), K, source_p=p0).sample(
        x_init, div_free=div_free, **kw
    )
    torch.manual_seed(5)
    theirs = ref_solver.MixtureDiscreteEulerSolver(
        AsProbabilities(model), ref_path.MixtureDiscreteProbPath(ref_s), K, source_distribution_p=p0
    ).sample(x_init, div_free=div_free, **kw)
    assert (ours == theirs).float().mean() > 0.999  # equal but for rare ties at exp rounding


def test_euler_sampler_reaches_a_certain_posterior():
    # A model that is sure of its target: every chain must end there, whatever the noise.
    target = torch.tensor([3, 0, 6])

    def sure(x, t, **extras):
        return torch.nn.functional.one_hot(target, K).float().expand(x.shape[0], 3, K) * 50

    x = DiscreteEulerSolver(sure, MixtureDiscretePath(CondOTScheduler()), K).sample(
        torch.randint(0, K, (100, 3)), n_steps=10, generator=torch.Generator().manual_seed(0)
    )
    assert (x == target).all()


def test_euler_sampler_intermediates_start_at_init():
    model = TinyPosterior(2)
    x0 = torch.randint(0, K, (10, 2))
    traj = DiscreteEulerSolver(model, MixtureDiscretePath(CondOTScheduler()), K).sample(
        x0, step_size=0.1, time_grid=torch.tensor([0.0, 0.5, 1.0]), return_intermediates=True,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert traj.shape == (3, 10, 2) and torch.equal(traj[0], x0)


def test_divergence_free_term_needs_a_source():
    solver = DiscreteEulerSolver(TinyPosterior(2), MixtureDiscretePath(CondOTScheduler()), K)
    with pytest.raises(ValueError, match="source_p"):
        solver.sample(torch.zeros(2, 2, dtype=torch.long), n_steps=2, div_free=1.0)
