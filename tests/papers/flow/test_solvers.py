"""ODE sampling and likelihoods: closed-form solutions, gradients, and the reference."""

import math

import pytest
import torch
from torch import nn

from minirepro.papers.flow import (
    ODESolver,
    divergence_exact,
    make_time_grid,
    standard_normal_log_prob,
)

ref_solver = pytest.importorskip("flow_matching.solver")

METHODS = ["euler", "midpoint", "rk4", "dopri5"]
# (steps, tolerance) per method for the closed-form checks in float64
ACCURACY = {
    "euler": (2000, 2e-3),
    "midpoint": (200, 1e-5),
    "rk4": (48, 1e-7),
    "dopri5": (None, 1e-6),
}


def _steps(method):
    n, _ = ACCURACY[method]
    return {} if n is None else {"n_steps": n}


class Linear(nn.Module):
    """u(x, t) = a x: x(t) = x(0) exp(a t)."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))

    def forward(self, x, t, **extras):
        return self.a * x


def gaussian_velocity(mu, s):
    """The CondOT marginal velocity from N(0, I) to N(mu, diag(s)^2): x(1) = mu + s x(0)."""

    def u(x, t, **extras):
        var = t**2 * s**2 + (1 - t) ** 2
        r = x - t * mu
        return mu + t * s**2 / var * r - (1 - t) / var * r

    return u


@pytest.mark.parametrize("method", METHODS)
def test_linear_field_reaches_its_known_endpoint(method):
    x0 = torch.randn(16, 3, dtype=torch.float64)
    x1 = ODESolver(Linear(0.7)).sample(x0, method=method, atol=1e-10, rtol=1e-10, **_steps(method))
    torch.testing.assert_close(x1, x0 * math.exp(0.7), rtol=ACCURACY[method][1], atol=0)


@pytest.mark.parametrize("method", METHODS)
def test_time_dependent_field_and_intermediates(method):
    # u = 3 t^2: x(t) = x(0) + t^3, reported at every time of the grid
    x0 = torch.randn(8, 2, dtype=torch.float64)
    grid = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    sol = ODESolver(lambda x, t: torch.ones_like(x) * 3 * t**2).sample(
        x0, method=method, time_grid=grid, return_intermediates=True, atol=1e-10, rtol=1e-10,
        **_steps(method),
    )  # fmt: skip
    assert sol.shape == (4, 8, 2)
    expected = x0[None] + grid[:, None, None] ** 3
    torch.testing.assert_close(sol, expected, rtol=0, atol=3 * ACCURACY[method][1])


@pytest.mark.parametrize("method", METHODS)
def test_gaussian_flow_endpoint_and_backwards(method):
    mu, s = (
        torch.tensor([2.0, -1.0], dtype=torch.float64),
        torch.tensor([0.5, 1.5], dtype=torch.float64),
    )
    solver = ODESolver(gaussian_velocity(mu, s))
    x0 = torch.randn(32, 2, dtype=torch.float64)
    x1 = solver.sample(x0, method=method, atol=1e-10, rtol=1e-10, **_steps(method))
    tol = 10 * ACCURACY[method][1]
    torch.testing.assert_close(x1, mu + s * x0, rtol=0, atol=tol)
    back = solver.sample(
        x1, method=method, time_grid=(1.0, 0.0), atol=1e-10, rtol=1e-10, **_steps(method)
    )
    torch.testing.assert_close(back, x0, rtol=0, atol=2 * tol)


@pytest.mark.parametrize("method", METHODS)
def test_gradient_through_the_solver(method):
    # d x(1) / d a = t x(0) exp(a t) at t = 1
    model = Linear(0.4)
    x0 = torch.randn(10, 2, dtype=torch.float64)
    x1 = ODESolver(model).sample(
        x0, method=method, enable_grad=True, atol=1e-10, rtol=1e-10, **_steps(method)
    )
    (grad,) = torch.autograd.grad(x1.sum(), model.a)
    assert grad.item() == pytest.approx(
        (x0.sum() * math.exp(0.4)).item(), rel=10 * ACCURACY[method][1]
    )
    # and with respect to the initial points: exp(a)
    x0.requires_grad_(True)
    x1 = ODESolver(model).sample(
        x0, method=method, enable_grad=True, atol=1e-10, rtol=1e-10, **_steps(method)
    )
    (gx,) = torch.autograd.grad(x1.sum(), x0)
    torch.testing.assert_close(
        gx, torch.full_like(x0, math.exp(0.4)), rtol=10 * ACCURACY[method][1], atol=0
    )


def test_sample_without_enable_grad_keeps_no_graph(tiny_velocity):
    x = ODESolver(tiny_velocity(2)).sample(torch.randn(4, 2), n_steps=4)
    assert not x.requires_grad


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("method", ["midpoint", "rk4", "dopri5"])
def test_likelihood_of_the_gaussian_flow_is_the_gaussian_density(method, exact):
    mu, s = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.5, 1.5, 1.0])
    mu, s = mu.double(), s.double()
    x1 = mu + s * torch.randn(64, 3, dtype=torch.float64)
    n = {"midpoint": {"n_steps": 400}, "rk4": {"n_steps": 50}, "dopri5": {}}[method]
    x0, log_p = ODESolver(gaussian_velocity(mu, s)).log_likelihood(
        x1, exact_divergence=exact, method=method, atol=1e-9, rtol=1e-9, **n
    )
    # The Jacobian is diagonal, so even Hutchinson's one-probe estimate is exact here.
    expected = torch.distributions.Normal(mu, s).log_prob(x1).sum(-1)
    torch.testing.assert_close(log_p, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(x0, (x1 - mu) / s, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dim", [5, 20])
def test_divergence_exact_equals_the_jacobian_trace(tiny_velocity, dim):
    model = tiny_velocity(dim).double()
    x = torch.randn(6, dim, dtype=torch.float64, requires_grad=True)
    u = model(x, torch.tensor(0.3, dtype=torch.float64))
    jac = torch.func.vmap(
        torch.func.jacrev(lambda xi: model(xi[None], torch.tensor(0.3, dtype=torch.float64))[0])
    )(x)
    torch.testing.assert_close(divergence_exact(u, x), jac.diagonal(dim1=-2, dim2=-1).sum(-1))


def test_make_time_grid():
    g = make_time_grid((0.0, 1.0), step_size=0.1)
    assert len(g) == 11 and g[-1] == 1.0
    g = make_time_grid((1.0, 0.0), step_size=0.3)
    torch.testing.assert_close(g, torch.tensor([1.0, 0.7, 0.4, 0.1, 0.0]))
    assert len(make_time_grid((0.0, 1.0), n_steps=7)) == 8
    torch.testing.assert_close(
        make_time_grid(torch.tensor([0.0, 0.3, 1.0])), torch.tensor([0.0, 0.3, 1.0])
    )


# ------------------------------------------------------------------------ likelihood gradients
@pytest.mark.parametrize("exact", [True, False])
def test_likelihood_gradients_match_finite_differences(tiny_velocity, exact):
    model = tiny_velocity(3, seed=4).double()
    x1 = torch.randn(5, 3, dtype=torch.float64)
    probe = torch.randint(0, 2, (5, 3), generator=torch.Generator().manual_seed(0)).double() * 2 - 1

    def total_log_p(x):
        _, log_p = ODESolver(model).log_likelihood(
            x, method="midpoint", n_steps=6, exact_divergence=exact, probe=probe, enable_grad=True
        )
        return log_p.sum()

    x = x1.clone().requires_grad_(True)
    value = total_log_p(x)
    gx, gw = torch.autograd.grad(value, [x, model.l1.weight])
    assert gx.abs().sum() > 0 and gw.abs().sum() > 0
    eps = 1e-6
    for idx in [(0, 0), (4, 2)]:
        e = torch.zeros_like(x1)
        e[idx] = eps
        with torch.no_grad():
            fd = (total_log_p(x1 + e) - total_log_p(x1 - e)) / (2 * eps)
        assert gx[idx].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-7)
    w = model.l1.weight
    for idx in [(3, 2)]:
        with torch.no_grad():
            w[idx] += eps
            up = total_log_p(x1)
            w[idx] -= 2 * eps
            down = total_log_p(x1)
            w[idx] += eps
        assert gw[idx].item() == pytest.approx(((up - down) / (2 * eps)).item(), rel=1e-5, abs=1e-7)


def test_likelihood_without_enable_grad_has_no_graph(tiny_velocity):
    model = tiny_velocity(2)
    _, log_p = ODESolver(model).log_likelihood(torch.randn(4, 2), n_steps=4)
    assert not log_p.requires_grad


# ------------------------------------------------------------------------------- reference
@pytest.mark.parametrize(
    "method,kw",
    [
        ("euler", {"step_size": 0.05}),
        ("midpoint", {"step_size": 0.1}),
        ("rk4", {"step_size": 0.125}),
        ("euler", {"step_size": None}),
        ("dopri5", {"step_size": None}),
    ],
)
def test_samples_equal_reference(tiny_velocity, method, kw):
    model = tiny_velocity(2, seed=1)
    x0 = torch.randn(200, 2, generator=torch.Generator().manual_seed(3))
    grid = (
        torch.linspace(0, 1, 9)
        if kw["step_size"] is None and method != "dopri5"
        else torch.tensor([0.0, 1.0])
    )
    ours = ODESolver(model).sample(x0, method=method, time_grid=grid, **kw)
    theirs = ref_solver.ODESolver(model).sample(x_init=x0, method=method, time_grid=grid, **kw)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_intermediates_equal_reference(tiny_velocity, method):
    # Requested times between steps are linearly interpolated, as torchdiffeq does.
    model = tiny_velocity(3, seed=2)
    x0 = torch.randn(50, 3)
    grid = torch.tensor([0.0, 0.3, 0.55, 1.0])
    ours = ODESolver(model).sample(
        x0, method=method, step_size=0.1, time_grid=grid, return_intermediates=True
    )
    theirs = ref_solver.ODESolver(model).sample(
        x_init=x0, method=method, step_size=0.1, time_grid=grid, return_intermediates=True
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    back = torch.tensor([1.0, 0.5, 0.0])
    ours = ODESolver(model).sample(
        x0, method=method, step_size=0.1, time_grid=back, return_intermediates=True
    )
    theirs = ref_solver.ODESolver(model).sample(
        x_init=x0, method=method, step_size=0.1, time_grid=back, return_intermediates=True
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize(
    "method,step", [("euler", 0.05), ("midpoint", 0.1), ("rk4", 0.25), ("dopri5", None)]
)
def test_likelihood_equals_reference(tiny_velocity, method, step, exact):
    model = tiny_velocity(3, seed=3)
    x1 = torch.randn(64, 3, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(11)  # the reference draws its Hutchinson probe from the global RNG
    x0_ref, lp_ref = ref_solver.ODESolver(model).compute_likelihood(
        x_1=x1,
        log_p0=standard_normal_log_prob,
        step_size=step,
        method=method,
        exact_divergence=exact,
    )
    torch.manual_seed(11)  # ... which our default probe reproduces
    x0, lp = ODESolver(model).log_likelihood(
        x1, standard_normal_log_prob, step_size=step, method=method, exact_divergence=exact
    )
    torch.testing.assert_close(x0, x0_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lp, lp_ref, rtol=1e-5, atol=1e-5)
