"""The BFS analysis: what each continuous thought puts probability on.

Decoding thought t with the LM head (the logits at the position before latent t+1, i.e.
what the model would say there in language) gives a probability for every concept of the
question's graph. Sorting the concepts by their BFS depth from the person: the *frontier*
after t thoughts is the concepts t edges away, *visited* ones are nearer, *later* ones
farther, and *unreachable* ones cannot be reached at all. The paper (Sec. 5, Figs. 8-9)
finds the thoughts spread their mass over the frontier, as a breadth-first search would,
and little on unreachable nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from minirepro.core.tokenizer import WordTokenizer
from minirepro.papers.coconut.curriculum import Curriculum, inference_prompt, tokenize_record
from minirepro.papers.coconut.latent import Coconut, latent_columns, left_pad
from minirepro.tasks.prosqa import bfs_depths

__all__ = ["CLASSES", "frontier_analysis", "plot_frontier"]

CLASSES = ("visited", "frontier", "later", "unreachable")


@torch.no_grad()
def frontier_analysis(
    net: Coconut,
    tok: WordTokenizer,
    records: Sequence[dict[str, Any]],
    cur: Curriculum,
    batch_size: int = 125,
) -> dict[str, Any]:
    """Probability on each class of concept after each thought, averaged over records.

    Returns:
        ``mass[c][t]``: mean total probability on the concepts of class c decoded from
        thought t+1; ``per_node[c][t]``: the same divided by the class size (mean over
        records where the class is not empty); ``n_thoughts``.
    """
    if not net.recycle:
        raise ValueError("the frontier analysis decodes continuous thoughts; recycle is off")
    K = cur.n_thoughts
    mass = {c: torch.zeros(K) for c in CLASSES}
    per_node = {c: torch.zeros(K) for c in CLASSES}
    counts = {c: torch.zeros(K) for c in CLASSES}
    device = next(net.parameters()).device
    for lo in range(0, len(records), batch_size):
        batch = records[lo : lo + batch_size]
        prompts = [inference_prompt(tokenize_record(tok, r), "coconut", cur, tok) for r in batch]
        ids, docs = left_pad(prompts, [len(p) for p in prompts], tok.pad_id)
        logits = net(ids.to(device), docs.to(device))  # (B, S, V)
        cols = latent_columns(ids, net.latent_id)
        probs = logits[:, [c - 1 for c in cols]].float().softmax(-1).cpu()  # (B, K, V)
        for b, r in enumerate(batch):
            sym = r["idx_to_symbol"]
            depth = bfs_depths(len(sym), r["edges"], r["root"])
            for t in range(K):
                groups: dict[str, list[int]] = {c: [] for c in CLASSES}
                for v, d in enumerate(depth):
                    if v == r["root"]:
                        continue
                    c = (
                        "unreachable" if d < 0
                        else "frontier" if d == t + 1
                        else "visited" if d <= t
                        else "later"
                    )  # fmt: skip
                    groups[c].append(tok.token_to_id(sym[v]))
                for c, ids_c in groups.items():
                    m = float(probs[b, t, ids_c].sum()) if ids_c else 0.0
                    mass[c][t] += m
                    if ids_c:
                        per_node[c][t] += m / len(ids_c)
                        counts[c][t] += 1
    n = max(1, len(records))
    return {
        "n_thoughts": K,
        "mass": {c: (mass[c] / n).tolist() for c in CLASSES},
        "per_node": {c: (per_node[c] / counts[c].clamp(min=1)).tolist() for c in CLASSES},
    }


def plot_frontier(analyses: Sequence[dict[str, Any]], title: str = "Coconut thoughts"):
    """A figure of the mass per class against the thought index, averaged over analyses
    (one per seed). Returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    K = analyses[0]["n_thoughts"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, label in [
        (axes[0], "mass", "total probability"),
        (axes[1], "per_node", "probability per concept"),
    ]:
        for c in CLASSES:
            ys = torch.tensor([a[key][c] for a in analyses]).mean(0)
            ax.plot(range(1, K + 1), ys, marker="o", label=c)
        ax.set_xlabel("thought t (decoded with the LM head)")
        ax.set_ylabel(label)
        ax.set_xticks(range(1, K + 1))
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}: concepts by BFS depth from the person (frontier = depth t)")
    fig.tight_layout()
    return fig
