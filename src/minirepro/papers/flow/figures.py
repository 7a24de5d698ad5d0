"""Figures of the reproductions (matplotlib, headless)."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from minirepro.papers.flow.data import CHECKER_SCALE  # noqa: E402

__all__ = [
    "checkerboard_figure",
    "digits_figure",
    "discrete_figure",
    "likelihood_figure",
    "sphere_figure",
]

_LIM = 2.2 * CHECKER_SCALE


def _hist(ax: Any, x: torch.Tensor, title: str, bins: int = 120) -> None:
    ax.hist2d(x[:, 0].numpy(), x[:, 1].numpy(), bins=bins, range=[[-_LIM, _LIM]] * 2, cmap="magma")
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def checkerboard_figure(r: dict[str, Any]) -> Figure:
    """Data, the flow at t = 0, 0.25, ..., 1 (ODE intermediates)."""
    traj = r["_traj"]
    fig, axes = plt.subplots(1, len(traj) + 1, figsize=(2.4 * (len(traj) + 1), 2.6))
    _hist(axes[0], r["_data"], "data")
    times = torch.linspace(0, 1, len(traj))
    for ax, x, t in zip(axes[1:], traj, times):
        _hist(ax, x, f"t = {t:.2f}")
    axes[-1].set_title(f"t = 1: {r['accuracy']:.3f} on squares", fontsize=9)
    fig.suptitle("Continuous flow matching, CondOT path", fontsize=10)
    return fig


def discrete_figure(r: dict[str, Any], bins: int) -> Figure:
    """Token histograms, binned 4 x 4 tokens per pixel so that 10^4 samples are readable."""
    fig, axes = plt.subplots(1, 2, figsize=(5.2, 2.8))
    for ax, x, title in [
        (axes[0], r["_data"], "data (tokens)"),
        (axes[1], r["_samples"], f"samples: {r['accuracy']:.3f} on squares"),
    ]:
        ax.hist2d(
            x[:, 0].numpy(), x[:, 1].numpy(), bins=bins // 4, range=[[0, bins]] * 2, cmap="magma"
        )
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Discrete flow matching, mixture path", fontsize=10)
    return fig


def _lon_lat(x: torch.Tensor) -> tuple[Any, Any]:
    lon = torch.atan2(x[:, 1], x[:, 0])
    lat = torch.asin(x[:, 2].clamp(-1, 1))
    return lon.numpy(), lat.numpy()


def sphere_figure(r: dict[str, Any]) -> Figure:
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.8), sharey=True)
    for ax, x, title in [
        (axes[0], r["_data"], "vMF mixture (data)"),
        (axes[1], r["_samples"], f"samples (MMD test p = {r['mmd_p_value']:.2f})"),
    ]:
        lon, lat = _lon_lat(x)
        ax.scatter(lon, lat, s=2, alpha=0.5)
        ax.set_xlim(-3.2, 3.2)
        ax.set_ylim(-1.6, 1.6)
        ax.set_xlabel("longitude")
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel("latitude")
    fig.suptitle("Riemannian flow matching on S^2", fontsize=10, y=1.04)
    return fig


def digits_figure(r: dict[str, Any], cfg: Any) -> Figure:
    """Ten generated samples of each class (rows), and accuracy against the guidance weight."""
    x = r["_samples"].view(10, -1, 8, 8)[:, :10]
    x = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)  # a white border per tile
    fig = plt.figure(figsize=(9, 4.2))
    grid = fig.add_gridspec(1, 2, width_ratios=[2.2, 1])
    ax = fig.add_subplot(grid[0])
    tiles = x.permute(0, 2, 1, 3).reshape(10 * 10, -1)  # (class, row, sample, col) -> image
    ax.imshow(-tiles.numpy(), cmap="gray", vmin=-1, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([5 + 10 * i for i in range(10)], [str(i) for i in range(10)])
    ax.set_ylabel("requested digit")
    ax.set_title(f"generated, guidance w = {cfg.dig_guidance:g}", fontsize=9)
    ax2 = fig.add_subplot(grid[1])
    ws = sorted(float(k[len("accuracy_w") :]) for k in r if k.startswith("accuracy_w"))
    ax2.plot(ws, [r[f"accuracy_w{w:g}"] for w in ws], "o-")
    ax2.axhline(0.8, ls="--", c="gray", lw=1)
    ax2.set_xlabel("guidance weight w")
    ax2.set_ylabel("classified as requested")
    ax2.set_ylim(0, 1.02)
    fig.suptitle("Class-conditional flow on real 8x8 digits", fontsize=10)
    return fig


def likelihood_figure(r: dict[str, Any]) -> Figure:
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    e, h = r["_exact"].numpy(), r["_hutchinson"].numpy()
    ax.scatter(e, h, s=5, alpha=0.6)
    lo, hi = min(e.min(), h.min()), max(e.max(), h.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("log p, exact divergence")
    ax.set_ylabel("log p, Hutchinson")
    ax.set_title(f"means differ by {100 * r['relative_difference']:.2f}%", fontsize=9)
    return fig
