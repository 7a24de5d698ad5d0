"""Figures of the reproduction: accuracy by lookahead, accuracy vs size, the probe."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_accuracy", "plot_probe", "plot_sweep"]


def plot_accuracy(rows: list[dict]):
    """Balanced- vs naive-trained accuracy per test lookahead (one line per seed)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for role, color in (("main", "tab:blue"), ("naive", "tab:red")):
        for i, r in enumerate(r for r in rows if r["role"] == role):
            la = sorted(r["acc_by_lookahead"])
            label = ("balanced" if role == "main" else "naive") + "-trained" if i == 0 else None
            ax.plot(la, [r["acc_by_lookahead"][k] for k in la], "o-", color=color, alpha=0.7,
                    label=label)  # fmt: skip
    ax.axhline(0.9, color="grey", ls=":", lw=1)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("lookahead of the test example")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend()
    return fig


def plot_sweep(rows: list[dict], cfg):
    """Balanced test accuracy vs input size at the base and the wider width (the sweep's
    runs; the main run stands in for its point only when the sweep trains as long)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    sweep = [r for r in rows if r["role"] == "sweep"]
    covered = {(r["max_input_size"], r["d_model"], r["seed"]) for r in sweep}
    sweep += [
        r for r in rows
        if r["role"] == "main" and (r["max_input_size"], r["d_model"], r["seed"]) not in covered
    ]  # fmt: skip
    for w in sorted({r["d_model"] for r in sweep}):
        pts: dict[int, list[float]] = {}
        for r in sweep:
            if r["d_model"] == w:
                pts.setdefault(r["max_input_size"], []).append(r["acc_balanced"])
        sizes = sorted(pts)
        mean = [np.mean(pts[z]) for z in sizes]
        std = [np.std(pts[z]) for z in sizes]
        ax.errorbar(sizes, mean, yerr=std, marker="o", capsize=3, label=f"d_model={w}")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("max input size (tokens)")
    ax.set_ylabel("accuracy (balanced test set)")
    ax.set_ylim(0, 1.02)
    ax.legend()
    return fig


def plot_probe(rows: list[dict]):
    """Probe recall by distance per layer (first seed) and the radius per layer (all seeds)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    if rows:
        p = rows[0]["probe"]
        recall = np.array(p["recall"], dtype=float)
        d = np.arange(1, p["max_distance"] + 1)
        for layer, rec in enumerate(recall):
            a.plot(d, rec[: len(d)], "o-", label=f"layer {layer}")
        a.axhline(rows[0].get("probe_threshold", 0.9), color="grey", ls=":", lw=1)
        a.set_xlabel("distance from the edge's target vertex")
        a.set_ylabel("probe recall")
        a.set_ylim(0, 1.02)
        a.legend(fontsize=7)
        for r in rows:
            radius = r["probe"]["radius"]
            b.plot(range(len(radius)), radius, "o-", alpha=0.7, label=f"seed {r['seed']}")
        layers = np.arange(1, len(rows[0]["probe"]["radius"]))
        b.plot(layers, np.minimum(2.0 ** (layers - 1), p["max_distance"]), "k--", lw=1,
               label="2^(layer-1)")  # fmt: skip
        b.xaxis.get_major_locator().set_params(integer=True)
        a.xaxis.get_major_locator().set_params(integer=True)
        b.set_xlabel("layer (0 = embedding)")
        b.set_ylabel("reachable radius")
        b.legend(fontsize=7)
    fig.tight_layout()
    return fig
