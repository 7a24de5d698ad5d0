"""Flow Matching Guide and Code (Lipman et al., 2024) — https://arxiv.org/abs/2412.06264

Claim: a generative model is trained by regressing a velocity field along a chosen
probability path, with no ODE simulation during training; the same recipe covers continuous
data, discrete tokens (mixture paths) and manifolds (geodesic paths).

Implemented here (our own code; the PyPI `flow-matching` package, CC BY-NC, is only the
reference the tests and the benchmark compare against):

- schedulers: CondOT, polynomial, VP, linear-VP, cosine with derivatives and SNR inverse;
  `RescheduledVelocity` samples a trained model with another scheduler, no retraining.
- paths: affine and conditional-OT paths, velocity <-> x_1 <-> epsilon conversions.
- solvers: ODE sampling (euler, midpoint, rk4; dopri5 and others via torchdiffeq) with
  intermediates; log-likelihoods with exact (batched) or Hutchinson divergence, and with
  gradients (`enable_grad=True`; the reference detaches and returns no gradient).
- discrete: the mixture path, posterior -> velocity, the discrete Euler (CTMC) sampler with
  an optional divergence-free term.
- manifolds, riemannian: Sphere, FlatTorus, geodesic paths, a projected Riemannian solver.
- losses: velocity MSE and the generalized KL of mixture paths.
- guidance: classifier-free guidance for continuous velocities and discrete posteriors.

Reproductions (`repro.py`): 2D checkerboard (continuous and on a token grid), a vMF mixture
on the sphere, exact vs Hutchinson likelihoods, and class-conditional generation of
scikit-learn's real 8x8 digits with guidance, judged by a classifier trained on real digits.

Deviations: CPU-sized MLPs and data instead of the paper's U-Nets on CIFAR-10/ImageNet, so
the paper's FID numbers are not reproduced; see NOTES.md for what was measured and tried.

Run: `minirepro run flow` (quick preset; `--preset smoke|quick|full`).
"""

from minirepro.papers.flow.discrete import (
    DiscreteEulerSolver,
    DiscretePathSample,
    MixtureDiscretePath,
    categorical,
    uniform_source,
)
from minirepro.papers.flow.guidance import GuidedPosterior, GuidedVelocity, drop_labels
from minirepro.papers.flow.losses import generalized_kl, velocity_mse
from minirepro.papers.flow.manifolds import Euclidean, FlatTorus, Manifold, Sphere
from minirepro.papers.flow.paths import AffinePath, CondOTPath, PathSample
from minirepro.papers.flow.repro import PRESETS, Config, run
from minirepro.papers.flow.riemannian import GeodesicPath, RiemannianODESolver, TangentVelocity
from minirepro.papers.flow.schedulers import (
    CondOTScheduler,
    ConvexScheduler,
    CosineScheduler,
    LinearVPScheduler,
    PolynomialScheduler,
    RescheduledVelocity,
    Scheduler,
    SchedulerOutput,
    VPScheduler,
)
from minirepro.papers.flow.solvers import (
    ODESolver,
    divergence_exact,
    divergence_hutchinson,
    make_time_grid,
    standard_normal_log_prob,
)
from minirepro.registry import Paper

PAPER = Paper(
    id="flow",
    title="Flow Matching Guide and Code",
    arxiv="2412.06264",
    claims=[
        "2D checkerboard, continuous: >= 95% of samples on the filled squares",
        "2D checkerboard, discrete tokens: >= 90% on the filled squares",
        "sphere: samples on the manifold (<= 1e-5) and matching the target (MMD test, 5%)",
        "real 8x8 digits with classifier-free guidance: >= 80% classified as requested",
        "log-likelihood: Hutchinson within 5% of the exact divergence",
    ],
    config=Config,
    presets=PRESETS,
    run=run,
)

__all__ = [
    "PAPER",
    "PRESETS",
    "Config",
    "run",
    "AffinePath",
    "CondOTPath",
    "CondOTScheduler",
    "ConvexScheduler",
    "CosineScheduler",
    "DiscreteEulerSolver",
    "DiscretePathSample",
    "Euclidean",
    "FlatTorus",
    "GeodesicPath",
    "GuidedPosterior",
    "GuidedVelocity",
    "LinearVPScheduler",
    "Manifold",
    "MixtureDiscretePath",
    "ODESolver",
    "PathSample",
    "PolynomialScheduler",
    "RescheduledVelocity",
    "RiemannianODESolver",
    "Scheduler",
    "SchedulerOutput",
    "Sphere",
    "TangentVelocity",
    "VPScheduler",
    "categorical",
    "divergence_exact",
    "divergence_hutchinson",
    "drop_labels",
    "generalized_kl",
    "make_time_grid",
    "standard_normal_log_prob",
    "uniform_source",
    "velocity_mse",
]
