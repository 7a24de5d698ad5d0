"""The paper's analyses of a training Jacobian, as functions of tensors (no plotting, no I/O).

Notation: `J = U diag(S) Vh` is the training Jacobian d(theta_final)/d(theta_init), rows of
`Vh` are right (initialisation-side) singular vectors `v_i`, columns of `U` left
(final-side) ones `u_i`. The bulk is `{i : |S_i - 1| < tol}`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import jacrev, vmap

from minirepro.papers.jacobian.jacobian import SVD

__all__ = [
    "Linearity",
    "Regions",
    "alignment",
    "bulk_indices",
    "linearity",
    "nullspace_overlap",
    "output_gram",
    "output_kl",
    "random_subspace_overlap",
    "regions",
    "subspace_bases",
    "subspace_overlap",
]


# ------------------------------------------------------------------------------ spectrum


@dataclass(frozen=True)
class Regions:
    """Counts of singular values in the three regions at tolerance `tol`.

    Attributes:
        tol: Half-width of the bulk band around 1.
        chaotic: Count of S >= 1 + tol.
        bulk: Count of |S - 1| < tol.
        stable: Count of S <= 1 - tol.
    """

    tol: float
    chaotic: int
    bulk: int
    stable: int

    @property
    def total(self) -> int:
        return self.chaotic + self.bulk + self.stable


def regions(S: torch.Tensor, tol: float) -> Regions:
    """Splits the spectrum `S` (K,) into chaotic / bulk / stable counts at `tol`."""
    d = S - 1
    return Regions(
        tol=tol,
        chaotic=int((d >= tol).sum()),
        bulk=int((d.abs() < tol).sum()),
        stable=int((d <= -tol).sum()),
    )


def bulk_indices(S: torch.Tensor, tol: float) -> torch.Tensor:
    """Indices i with |S_i - 1| < tol, in the SVD's (descending) order."""
    return torch.nonzero((S - 1).abs() < tol).flatten()


def alignment(svd: SVD) -> torch.Tensor:
    """cos(u_i, v_i) for every singular pair, shape (K,). Signs are paired by the SVD."""
    return torch.einsum("ji,ij->i", svd.U, svd.Vh)


# ----------------------------------------------------------------------------- linearity


@dataclass(frozen=True)
class Linearity:
    """Final-parameter response to perturbing the init along one right singular vector.

    Attributes:
        index: Singular index i.
        sigma: S_i, the Jacobian's predicted gain.
        eps: (E,) perturbation sizes.
        along: (E,) |delta . u_i|, the response along the predicted direction.
        off: (E,) ||delta - (delta . u_i) u_i||, the response off it.
        rel_err: (E,) ||delta - eps S_i u_i|| / (eps S_i), distance from the linear prediction.
    """

    index: int
    sigma: float
    eps: torch.Tensor
    along: torch.Tensor
    off: torch.Tensor
    rel_err: torch.Tensor

    def linear_range(self, tol: float) -> float:
        """The largest eps up to which every rel_err stays below `tol` (0 if the first fails)."""
        ok = (self.rel_err < tol).tolist()
        last = 0.0
        for e, good in zip(self.eps.tolist(), ok):
            if not good:
                break
            last = e
        return last


def linearity(
    train_fn: Callable[[torch.Tensor], torch.Tensor],
    theta0: torch.Tensor,
    svd: SVD,
    indices: list[int],
    eps: torch.Tensor,
) -> list[Linearity]:
    """Retrains from `theta0 + eps * v_i` for every eps and index (one batched `vmap` run).

    Args:
        train_fn: Pure (P,) -> (P,) training run; must work under `vmap`.
        theta0: (P,) the initialisation the Jacobian was taken at.
        svd: The Jacobian's SVD.
        indices: Singular indices to probe (e.g. the top one and a bulk one).
        eps: (E,) perturbation sizes.
    """
    dtype = theta0.dtype
    theta_f = train_fn(theta0)
    v = svd.Vh[indices].to(dtype)  # (n, P)
    inits = theta0 + eps.to(dtype)[None, :, None] * v[:, None, :]  # (n, E, P)
    finals = vmap(train_fn)(inits.reshape(-1, theta0.numel())).reshape(inits.shape)
    out = []
    for j, i in enumerate(indices):
        delta = (finals[j] - theta_f).double()  # (E, P)
        u = svd.U[:, i]
        along = delta @ u
        off = (delta - along[:, None] * u).norm(dim=1)
        pred = eps.double() * svd.S[i]
        rel = (delta - pred[:, None] * u).norm(dim=1) / pred
        out.append(Linearity(int(i), float(svd.S[i]), eps, along.abs(), off, rel))
    return out


# ----------------------------------------------------------------- outputs after a step


def output_kl(
    apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    theta: torch.Tensor,
    directions: torch.Tensor,
    inputs: Mapping[str, torch.Tensor],
    *,
    step: float = 1.0,
    chunk: int = 256,
) -> dict[str, torch.Tensor]:
    """KL(p_theta || p_{theta + step * d}) for each direction d, maximised over inputs.

    As the reference (`optax.kl_divergence(log_softmax(perturbed), softmax(original))`,
    then `.max(axis=-1)` over inputs).

    Args:
        apply: `apply(theta, x) -> logits`.
        theta: (P,) the trained parameters (the computation runs in float64).
        directions: (K, P) unit directions (rows of Vh).
        inputs: Named input sets, each (N, d_in).
        step: Step length along each direction (the reference adds Vh itself: 1.0).
        chunk: Directions per `vmap` call.

    Returns:
        {name: (K,) max-over-inputs KL in nats}.
    """
    out: dict[str, torch.Tensor] = {}
    # float64 throughout: in-distribution KLs are ~1e-12, far below float32 round-off.
    theta, dirs = theta.double(), directions.double()
    for name, x in inputs.items():
        x = x.double()
        with torch.no_grad():
            logp0 = F.log_softmax(apply(theta, x), -1)  # (N, C)
            parts = []
            for d in dirs.split(chunk):
                logits = vmap(apply, in_dims=(0, None))(theta + step * d, x)  # (c, N, C)
                logp = F.log_softmax(logits, -1)
                kl = (logp0.exp() * (logp0 - logp)).sum(-1)  # (c, N)
                parts.append(kl.amax(-1))
            out[name] = torch.cat(parts).double()
    return out


# ------------------------------------------------------------------- subspace training


def subspace_bases(svd: SVD, k: int) -> dict[str, torch.Tensor]:
    """The reference's four k-dimensional subspaces, each (k, P) rows of Vh.

    bulk: the k directions with S closest to 1; complement: the k farthest from 1;
    chaotic: the k largest S; stable: the k smallest S.
    """
    order = torch.argsort((svd.S - 1).abs())
    return {
        "bulk": svd.Vh[order[:k]],
        "complement": svd.Vh[order[len(order) - k :]],
        "chaotic": svd.Vh[:k],
        "stable": svd.Vh[len(svd.S) - k :],
    }


# --------------------------------------------------------------------- subspace overlap


def subspace_overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared cosine of the principal angles between row spaces of `a` and `b`.

    Args:
        a: (ka, P) orthonormal rows.
        b: (kb, P) orthonormal rows.

    Returns:
        ||a b^T||_F^2 / min(ka, kb), in [0, 1]; 1 when one subspace contains the other.
    """
    m = a.double() @ b.double().T  # (ka, kb); its singular values are the cosines
    return float((m**2).sum() / min(a.shape[0], b.shape[0]))


def random_subspace_overlap(
    a: torch.Tensor, kb: int, generator: torch.Generator, n_samples: int = 3
) -> float:
    """`subspace_overlap(a, b)` averaged over random (Haar) kb-dimensional subspaces b.

    Its expectation is max(ka, kb) / P.
    """
    p = a.shape[1]
    vals = []
    for _ in range(n_samples):
        g = torch.randn(p, kb, generator=generator, dtype=torch.float64)
        q, _ = torch.linalg.qr(g)  # (P, kb) orthonormal columns
        vals.append(subspace_overlap(a, q.T))
    return sum(vals) / len(vals)


# ------------------------------------------------------------- output-Jacobian nullspace


def output_gram(
    apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    theta: torch.Tensor,
    x: torch.Tensor,
    *,
    chunk: int = 100,
) -> torch.Tensor:
    """G = J_f^T J_f / N in float64, J_f the (N*C, P) Jacobian of the centred logits on `x`.

    The logits are centred (minus their mean over classes) because softmax ignores a common
    shift: moving every output row or bias by the same amount changes the raw logits but not
    the function, and training never sees such a move (its singular value is exactly 1).
    Eigenvectors of G with eigenvalue ~0 span the nullspace of the parameter -> function
    map on `x`: directions that leave every prediction on `x` unchanged to first order.
    """

    def centred(th: torch.Tensor, xc: torch.Tensor) -> torch.Tensor:
        z = apply(th, xc)
        return z - z.mean(-1, keepdim=True)

    p = theta.numel()
    gram = torch.zeros(p, p, dtype=torch.float64)
    for xc in x.split(chunk):
        jf = jacrev(centred)(theta, xc).reshape(-1, p).double()  # (c*C, P)
        gram += jf.T @ jf
    return gram / x.shape[0]


def nullspace_overlap(
    gram: torch.Tensor, directions: torch.Tensor, rtol: float
) -> tuple[float, int, torch.Tensor]:
    """Overlap of span(directions) with the numerical nullspace of the output Jacobian.

    Args:
        gram: (P, P) from `output_gram`.
        directions: (k, P) orthonormal rows (e.g. the bulk's right singular vectors).
        rtol: An eigen-direction is null when sqrt(eigenvalue) < rtol * sqrt(max eigenvalue),
            i.e. its output sensitivity is below rtol of the most sensitive direction's.

    Returns:
        (overlap, null_dim, eigenvalues): overlap = mean over the rows of the squared norm
        of their projection on the nullspace (random rows give null_dim / P).
    """
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    evals = evals.clamp_min(0)
    null = evecs[:, evals.sqrt() < rtol * evals.max().sqrt()]  # (P, n_null)
    proj = directions.double() @ null  # (k, n_null)
    return float((proj**2).sum() / directions.shape[0]), null.shape[1], evals
