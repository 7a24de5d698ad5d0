"""Simulated schedules drawn as lanes of nano-batch-coloured bars."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from minirepro.papers.serve.nanobatch.simulate import Schedule


def draw_schedule(
    schedule: Schedule | Sequence[Schedule],
    path: str | os.PathLike[str],
    *,
    titles: Sequence[str] | None = None,
    window: float | None = None,
) -> Path:
    """Draws schedules (e.g. unsplit and auto-searched) as lanes of nano-batch-coloured bars.

    Args:
        schedule: One Schedule or several, drawn one above the other on a shared time axis.
        path: The PNG file to write.
        titles: One title per schedule.
        window: Show only [0, window] seconds (e.g. the first layers of an 80-layer model).

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scheds = [schedule] if isinstance(schedule, Schedule) else list(schedule)
    if not scheds:
        raise ValueError("no schedule to draw")
    titles = (
        list(titles)
        if titles is not None
        else [f"{s.plan.num_nano} nano-batch(es)" for s in scheds]
    )
    fig, axes = plt.subplots(
        len(scheds),
        1,
        figsize=(9, 1.1 + 0.55 * sum(len(s.lanes) for s in scheds)),
        sharex=True,
        squeeze=False,
    )
    colours = plt.get_cmap("tab10")
    scale = 1e3
    end = window if window is not None else max(s.makespan for s in scheds)
    for ax, s, title in zip(axes[:, 0], scheds, titles):
        for y, lane in enumerate(s.lanes):
            for seg in s.segments:
                if seg.lane != lane or seg.start >= end:
                    continue
                c = "0.6" if seg.nano < 0 else colours(seg.nano % 10)
                ax.barh(
                    y,
                    (min(seg.end, end) - seg.start) * scale,
                    left=seg.start * scale,
                    height=0.7,
                    color=c,
                    edgecolor="white",
                    linewidth=0.3,
                )
                wide = (seg.end - seg.start) / end > 0.06
                if wide:
                    ax.text(
                        (seg.start + min(seg.end, end)) / 2 * scale,
                        y,
                        seg.op,
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white",
                    )
        ax.set_yticks(range(len(s.lanes)), s.lanes)
        ax.invert_yaxis()
        ax.set_title(f"{title}: {s.makespan * scale:.3g} ms", fontsize=9)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=colours(i))
        for i in range(max(s.plan.num_nano for s in scheds))
    ]
    axes[0, 0].legend(
        handles,
        [f"nano-batch {i}" for i in range(len(handles))],
        fontsize=7,
        loc="upper right",
        ncol=len(handles),
    )
    axes[-1, 0].set_xlabel("time (ms)")
    axes[-1, 0].set_xlim(0, end * scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
