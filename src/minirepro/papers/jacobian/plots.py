"""One matplotlib figure per experiment; each function returns the Figure (the caller saves it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: figures are only ever written to files

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from minirepro.papers.jacobian.experiments import Linearity  # noqa: E402

__all__ = [
    "plot_alignment",
    "plot_kl",
    "plot_linearity",
    "plot_nullspace",
    "plot_overlaps",
    "plot_spectrum",
    "plot_subspace_training",
    "plot_variants",
]


def _bulk_band(ax, bulk: torch.Tensor) -> None:
    if len(bulk):
        ax.axvspan(int(bulk.min()), int(bulk.max()), color="tab:green", alpha=0.12, label="bulk")


def plot_spectrum(S: torch.Tensor, bulk: torch.Tensor, tol: float, title: str) -> Figure:
    """Singular values (log scale) and their distance from 1, bulk shaded."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    idx = torch.arange(len(S))
    axes[0].plot(idx, S, lw=1.2)
    axes[0].axhline(1.0, ls="--", c="k", lw=0.8)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("singular value")
    axes[1].plot(idx, (S - 1).abs().clamp_min(1e-12), lw=1.2)
    axes[1].axhline(tol, ls=":", c="k", lw=0.8, label=f"|σ-1| = {tol:g}")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("|σ - 1|")
    for ax in axes:
        _bulk_band(ax, bulk)
        ax.set_xlabel("index")
    axes[1].legend(loc="lower left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_alignment(cos: torch.Tensor, bulk: torch.Tensor) -> Figure:
    """cos(u_i, v_i) against the singular index."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.scatter(torch.arange(len(cos)), cos, s=3, alpha=0.3)
    _bulk_band(ax, bulk)
    ax.set_xlabel("singular value index")
    ax.set_ylabel("cos(u_i, v_i)")
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig


def plot_linearity(results: Sequence[Linearity], names: Sequence[str]) -> Figure:
    """Response of the final parameters to init perturbations, one panel per direction."""
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, r, name in zip(axes[0], results, names):
        ax.plot(r.eps, r.eps * r.sigma, "k--", label="Jacobian prediction ε·σ")
        ax.plot(r.eps, r.along.clamp_min(1e-12), "o-", ms=3, label="projection on u_i")
        ax.plot(r.eps, r.off.clamp_min(1e-12), "o-", ms=3, label="orthogonal to u_i")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("perturbation size ε")
        ax.set_ylabel("response in final parameters")
        ax.set_title(f"{name}: i={r.index}, σ={r.sigma:.4g}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_kl(kls: Mapping[str, torch.Tensor], bulk: torch.Tensor) -> Figure:
    """Max-over-inputs KL after a unit step along each right singular vector."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, kl in kls.items():
        ax.scatter(torch.arange(len(kl)), kl.clamp_min(1e-12), s=3, alpha=0.35, label=name)
    _bulk_band(ax, bulk)
    ax.set_yscale("log")
    ax.set_xlabel("singular vector index")
    ax.set_ylabel("KL(original || stepped), max over inputs")
    ax.legend(markerscale=4, fontsize=8)
    fig.tight_layout()
    return fig


def plot_subspace_training(
    ks: Sequence[int], losses: Mapping[str, Sequence[float]], full_loss: float, k_complement: int
) -> Figure:
    """Test loss of training restricted to subspaces of growing dimension."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in losses.items():
        ax.plot(ks, ys, "o-", ms=3, label=name)
    ax.axhline(full_loss, ls="--", c="k", lw=0.8, label="unconstrained")
    ax.axvline(k_complement, ls=":", c="gray", lw=0.8, label="P - n_bulk")
    ax.set_yscale("log")
    ax.set_xlabel("subspace dimension k")
    ax.set_ylabel("test loss (nats)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_variants(spectra: Mapping[str, torch.Tensor], tol: float) -> Figure:
    """|σ - 1| of the normal, shuffled-label and noise-input training Jacobians."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, S in spectra.items():
        ax.plot((S - 1).abs().clamp_min(1e-12), lw=1.2, label=name)
    ax.axhline(tol, ls=":", c="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("singular value index")
    ax.set_ylabel("|σ - 1|")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_overlaps(overlaps: Mapping[str, tuple[float, float]]) -> Figure:
    """Bulk-subspace overlaps (mean cos² of principal angles) against random subspaces."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(overlaps)
    x = torch.arange(len(names)).float()
    ax.bar(x - 0.2, [overlaps[n][0] for n in names], 0.4, label="bulk vs bulk")
    ax.bar(x + 0.2, [overlaps[n][1] for n in names], 0.4, label="random subspace")
    ax.set_xticks(x.tolist(), names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean cos² of principal angles")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_nullspace(sensitivity: torch.Tensor, bulk: torch.Tensor, title: str) -> Figure:
    """Output sensitivity sqrt(v_i^T G v_i) on the training data for each right vector."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(torch.arange(len(sensitivity)), sensitivity.clamp_min(1e-12), s=3, alpha=0.35)
    _bulk_band(ax, bulk)
    ax.set_yscale("log")
    ax.set_xlabel("singular vector index")
    ax.set_ylabel("RMS centred-logit change per unit step (train)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    return fig
