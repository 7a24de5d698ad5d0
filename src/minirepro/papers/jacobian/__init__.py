"""Understanding Gradient Descent through the Training Jacobian (Belrose & Scherlis, 2024).

arXiv: https://arxiv.org/abs/2412.07003 · reference: EleutherAI/training-jacobian (JAX).

Claim: the Jacobian of the trained parameters with respect to the initial parameters,
d(theta_final)/d(theta_init), has a singular value spectrum in three regions: chaotic (>> 1),
bulk (~= 1) and stable (< 1). The bulk (~3000 of 4810 values extremely close to 1 for a
digits MLP) is carried through training unchanged (left and right singular vectors
coincide), does not affect in-distribution outputs but does affect out-of-distribution
ones, depends on the input data but not on the labels, overlaps across seeds; training
restricted to the complement of the bulk matches unconstrained training.

Implemented here:
- `setup`: the reference's setup on scikit-learn's real digits (X/16, 1600/197 split,
  64 -> 64 -> 10 GELU MLP with Flax's init, fixed batch order, 25 epochs of SGD momentum 0.9
  with lr 0.1 cosine decay, or Adam 3e-3), with training a pure function of the flat
  parameter vector (`torch.func.functional_call` + `torch.func.grad`).
- `jacobian`: `training_jacobian(train_fn, theta0)`, forward mode (`torch.func.jvp` under
  `vmap` over chunks of tangents sized to a memory budget), each chunk checkpointed so an
  interrupted computation resumes, optionally spread over worker processes; `svd64`.
  Works for any pure `train_fn: (P,) -> (Q,)`.
- `fast`: `MLPPushforward`, the same forward-mode recursion written out by hand for the
  paper's MLP + SGD momentum (one GEMM per contraction), 2x faster; tested against
  `vmap(jvp)` and reverse mode.
- `experiments`: spectrum regions, cos(u_i, v_i), linearity along singular directions, KL
  after stepping along them, subspace bases for restricted training, principal-angle
  overlaps, the output-Jacobian nullspace. `plots` draws one figure for each.
- `repro`: `Config`, `PRESETS` and `run(cfg, out)` checking the claims.

Deviations: the quick preset uses hidden width 32 (2410 parameters) so that four Jacobians
fit in ten minutes on two cores; forward-mode training runs in float32 like the JAX
reference, while the SVD, KLs, linearity runs and nullspace are float64. See NOTES.md.

Run: `minirepro run jacobian --preset quick` (smoke: seconds; full: the 4810-parameter MLP).
"""

from minirepro.papers.jacobian.experiments import (
    Linearity,
    Regions,
    alignment,
    bulk_indices,
    linearity,
    nullspace_overlap,
    output_gram,
    output_kl,
    random_subspace_overlap,
    regions,
    subspace_bases,
    subspace_overlap,
)
from minirepro.papers.jacobian.fast import MLPPushforward, gelu_tanh_derivatives
from minirepro.papers.jacobian.jacobian import (
    SVD,
    chunk_size_for,
    process_pool,
    svd64,
    training_jacobian,
)
from minirepro.papers.jacobian.repro import CLAIMS, PRESETS, Config, run
from minirepro.papers.jacobian.setup import (
    MLP,
    Digits,
    FlatModel,
    OptimConfig,
    heldout_loss,
    load_digits_data,
    noise_inputs,
    shuffled_labels,
    train,
    train_in_subspaces,
    train_subspace,
)
from minirepro.registry import Paper

PAPER = Paper(
    id="jacobian",
    title="Understanding Gradient Descent through the Training Jacobian",
    arxiv="2412.07003",
    claims=CLAIMS,
    config=Config,
    presets=PRESETS,
    run=run,
    status="implemented",
)

__all__ = [
    "CLAIMS",
    "MLP",
    "MLPPushforward",
    "PAPER",
    "PRESETS",
    "SVD",
    "Config",
    "Digits",
    "FlatModel",
    "Linearity",
    "OptimConfig",
    "Regions",
    "alignment",
    "bulk_indices",
    "chunk_size_for",
    "gelu_tanh_derivatives",
    "linearity",
    "load_digits_data",
    "noise_inputs",
    "nullspace_overlap",
    "output_gram",
    "output_kl",
    "process_pool",
    "random_subspace_overlap",
    "regions",
    "run",
    "shuffled_labels",
    "subspace_bases",
    "subspace_overlap",
    "svd64",
    "heldout_loss",
    "train",
    "train_in_subspaces",
    "train_subspace",
    "training_jacobian",
]
