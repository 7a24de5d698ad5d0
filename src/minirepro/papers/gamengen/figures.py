"""Figures of a gamengen run: rollout strips, PSNR over rollout steps, a short GIF.

Kept apart from the training and evaluation code; `repro.run` calls it at the end.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minirepro.core.results import RunDir
from minirepro.papers.gamengen.evaluate import RolloutResult
from minirepro.papers.gamengen.world_model import to_uint8

__all__ = ["save_curves", "save_rollout_media"]


def save_rollout_media(
    out: RunDir, aug: RolloutResult, noaug: RolloutResult, *, scale: int = 3
) -> None:
    """figures/rollout_strip.png (real / with / without augmentation at a few steps) and
    figures/rollout.gif (the first rollouts side by side, every generated frame)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    length = aug.frames.shape[1]
    steps = sorted({0, 1, 3, 7, 15, 31, 47, 63, length - 1} & set(range(length)))
    rows = [("real", aug.real), ("noise aug", aug.frames), ("no aug", noaug.frames)]
    fig, axes = plt.subplots(len(rows), len(steps), figsize=(1.3 * len(steps), 1.4 * len(rows)))
    for r, (name, frames) in enumerate(rows):
        for c, k in enumerate(steps):
            ax = axes[r, c]
            ax.imshow(to_uint8(frames[0, k]), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(f"step {k + 1}", fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle("autoregressive rollout, recorded actions", fontsize=9)
    out.savefig(fig, "rollout_strip")
    n = min(2, aug.frames.shape[0])  # a short GIF: two rollouts
    gif = []
    for k in range(length):
        tiles = [
            np.concatenate([to_uint8(f[i, k]) for f in (aug.real, aug.frames, noaug.frames)], 1)
            for i in range(n)
        ]
        img = Image.fromarray(np.concatenate(tiles, 0))
        gif.append(img.resize((img.width * scale, img.height * scale), Image.NEAREST))
    out.figures_dir.mkdir(exist_ok=True)
    gif[0].save(
        out.figures_dir / "rollout.gif", save_all=True, append_images=gif[1:], duration=100, loop=0
    )


def save_curves(out: RunDir, rows: list[dict[str, Any]], cfg: Any) -> None:
    """figures/rollout_psnr.png: PSNR per rollout step with and without augmentation."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    x = np.arange(1, cfg.rollout_len + 1)
    for key, label in (("roll_curve_aug", "noise augmentation"), ("roll_curve_noaug", "none")):
        curves = np.array([r[key] for r in rows])
        ax.plot(x, curves.mean(0), label=label)
        if len(curves) > 1:
            ax.fill_between(x, curves.min(0), curves.max(0), alpha=0.2)
    copy = np.mean([r["copy_psnr"] for r in rows])
    ax.axhline(copy, color="grey", ls=":", label="copy last frame (1 step)")
    ax.axvspan(cfg.rollout_from, cfg.rollout_len, color="grey", alpha=0.08)
    ax.set_xlabel("autoregressive step")
    ax.set_ylabel("PSNR (dB)")
    ax.legend(fontsize=8)
    out.savefig(fig, "rollout_psnr")
