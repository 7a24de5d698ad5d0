"""Manifolds, geodesic paths and the Riemannian solver."""

import math

import pytest
import torch

from minirepro.papers.flow import (
    CondOTScheduler,
    FlatTorus,
    GeodesicPath,
    PolynomialScheduler,
    RiemannianODESolver,
    Sphere,
)

ref_man = pytest.importorskip("flow_matching.utils.manifolds")
ref_path = pytest.importorskip("flow_matching.path")
ref_sched = pytest.importorskip("flow_matching.path.scheduler")
ref_solver = pytest.importorskip("flow_matching.solver")


def _sphere_points(n, seed, dim=3):
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=-1, keepdim=True)


def _torus_points(n, seed, dim=2):
    return torch.rand(n, dim, generator=torch.Generator().manual_seed(seed)) * 2 * math.pi


MANIFOLDS = [
    (Sphere(), ref_man.Sphere(), _sphere_points),
    (FlatTorus(), ref_man.FlatTorus(), _torus_points),
]
IDS = ["sphere", "torus"]


@pytest.mark.parametrize("ours,theirs,points", MANIFOLDS, ids=IDS)
def test_maps_equal_reference(ours, theirs, points):
    x, y = points(200, 0), points(200, 1)
    torch.testing.assert_close(ours.logmap(x, y), theirs.logmap(x, y), rtol=1e-5, atol=1e-5)
    u = ours.proju(x, torch.randn_like(x) * 0.7)
    torch.testing.assert_close(ours.expmap(x, u), theirs.expmap(x, u), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.proju(x, 2 * u + x), theirs.proju(x, 2 * u + x))
    torch.testing.assert_close(ours.projx(3 * x + 0.1), theirs.projx(3 * x + 0.1))
    # exp undoes log
    torch.testing.assert_close(ours.expmap(x, ours.logmap(x, y)), y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ours,theirs,points", MANIFOLDS, ids=IDS)
def test_geodesic_path_equals_reference(ours, theirs, points):
    x0, x1 = points(300, 2), points(300, 3)
    t = torch.rand(300, generator=torch.Generator().manual_seed(4))
    a = GeodesicPath(PolynomialScheduler(2), ours).sample(x0, x1, t)
    b = ref_path.GeodesicProbPath(ref_sched.PolynomialConvexScheduler(2), theirs).sample(x0, x1, t)
    torch.testing.assert_close(a.x_t, b.x_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.dx_t, b.dx_t, rtol=1e-4, atol=1e-4)


def test_geodesic_velocity_is_the_time_derivative():
    x0, x1 = (Sphere().projx(_sphere_points(50, i).double()) for i in (5, 6))
    path = GeodesicPath(CondOTScheduler(), Sphere())
    t = torch.full((50,), 0.37, dtype=torch.float64)
    h = 1e-6
    fd = (path.sample(x0, x1, t + h).x_t - path.sample(x0, x1, t - h).x_t) / (2 * h)
    torch.testing.assert_close(path.sample(x0, x1, t).dx_t, fd, rtol=1e-6, atol=1e-6)
    s = path.sample(x0, x1, t)
    torch.testing.assert_close(
        (s.x_t * s.dx_t).sum(-1), torch.zeros(50, dtype=torch.float64), atol=1e-10, rtol=0
    )


class RandomField(torch.nn.Module):
    def __init__(self, dim, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(dim + 1, dim, generator=g))

    def forward(self, x, t, **extras):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1).expand(x.shape[0], 1)
        return torch.sin(torch.cat([x, t], -1) @ self.w)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
@pytest.mark.parametrize("ours,theirs,points", MANIFOLDS, ids=IDS)
def test_solver_equals_reference(ours, theirs, points, method):
    dim = 3 if isinstance(ours, Sphere) else 2
    field = RandomField(dim)
    x0 = points(100, 7)
    a = RiemannianODESolver(ours, field).sample(x0, method=method, step_size=0.05)
    b = ref_solver.RiemannianODESolver(theirs, field).sample(x0, step_size=0.05, method=method)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if isinstance(ours, Sphere):
        assert (a.norm(dim=-1) - 1).abs().max() < 1e-6
    # Intermediates in float64: the reference returns even on-grid times through a geodesic
    # interpolation (log then exp), whose float32 acos near 1 is only good to ~1e-4.
    field, x0 = field.double(), ours.projx(x0.double())
    grid = torch.tensor([0.0, 0.5, 0.73, 1.0], dtype=torch.float64)
    a = RiemannianODESolver(ours, field).sample(
        x0, method=method, step_size=0.05, time_grid=grid, return_intermediates=True
    )
    b = ref_solver.RiemannianODESolver(theirs, field).sample(
        x0, step_size=0.05, method=method, time_grid=grid, return_intermediates=True
    )
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_rotation_on_the_sphere_reaches_its_known_endpoint(method):
    # u(x) = w x (w skew): a rotation about the z axis by angle omega in unit time.
    omega = 1.3
    w = torch.tensor([[0.0, -omega, 0.0], [omega, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    x0 = _sphere_points(20, 8).double()
    n = {"euler": 4000, "midpoint": 200, "rk4": 20}[method]
    x1 = RiemannianODESolver(Sphere(), lambda x, t: x @ w.T).sample(x0, method=method, n_steps=n)
    c, s = math.cos(omega), math.sin(omega)
    rot = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    atol = {"euler": 1e-3, "midpoint": 2e-5, "rk4": 1e-6}[method]
    torch.testing.assert_close(x1, x0 @ rot.T, rtol=0, atol=atol)
