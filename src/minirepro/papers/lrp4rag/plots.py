"""The figure of LRP4RAG: relevance heat maps of responses over their prompt."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

__all__ = ["relevance_heatmaps"]


def relevance_heatmaps(
    matrices: Sequence[Tensor | np.ndarray],
    titles: Sequence[str],
    prompt_tokens: Sequence[str],
    response_tokens: Sequence[Sequence[str]],
    first_prompt_token: int = 0,
) -> Figure:
    """One heat map per response: response tokens (rows) × prompt tokens (columns).

    Colours share one symmetric scale across the panels (red = positive relevance), so a
    faithful and a hallucinated answer to the same prompt can be compared directly.

    Args:
        matrices: (n_response_i, n_prompt) relevance matrices.
        titles: a title per panel.
        prompt_tokens: the n_prompt prompt tokens as text.
        response_tokens: the response tokens of each panel as text.
        first_prompt_token: leave out prompt columns before this one (e.g. the chat
            template's header), for legibility.
    """
    mats = [np.asarray(m, dtype=np.float32)[:, first_prompt_token:] for m in matrices]
    if not mats or len(titles) != len(mats) or len(response_tokens) != len(mats):
        raise ValueError("give one title and one token list per matrix")
    scale = max(float(np.abs(m).max()) for m in mats) or 1.0
    cols = prompt_tokens[first_prompt_token:]
    fig = Figure(figsize=(max(8.0, 0.16 * len(cols)), 1.6 + 0.25 * sum(len(m) for m in mats)))
    axes = fig.subplots(len(mats), 1, squeeze=False)[:, 0]
    for ax, m, title, rows in zip(axes, mats, titles, response_tokens, strict=True):
        im = ax.imshow(m, cmap="bwr", vmin=-scale, vmax=scale, aspect="auto")
        ax.set_title(title, fontsize=9)
        ax.set_yticks(range(len(rows)), [repr(t)[1:-1] for t in rows], fontsize=6)
        ax.set_xticks(range(len(cols)), [repr(t)[1:-1] for t in cols], fontsize=5, rotation=90)
        fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
    fig.tight_layout()
    return fig
