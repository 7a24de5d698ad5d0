"""The BFS analysis: how a trained Coconut model values the concepts after k thoughts.

`frontier_analysis` is the paper's probe (Sec. 5, Figs. 7-9, "latent search as a tree"):
after k continuous thoughts the model is switched back to language by closing the thoughts
with <eot>, and the probability it assigns to each concept as the next reasoning step's node
is its "value". In the curriculum's format (`curriculum.stage_example`) stage k continues
``<bot>`` k·c latents ``<eot>`` with steps[k:], and for k >= 1 steps[k] reads "Every A is a
B ." where A is the chain's node at BFS depth k. So the probe feeds the prompt
question ``<bot>`` k·c latents ``<eot>`` "Every" and reads the next-token distribution: the
probability of each concept as A. The paper's Fig. 7 reads the same slot (after one thought
the children of the person get the mass). Concepts are grouped by BFS depth from the person:
*frontier* = depth k (the children of the nodes explored by the k-1 earlier hops: the nodes
a breadth-first search reaches at step k), *visited* = depth < k, *later* = depth > k,
*unreachable* = no path; ``gold`` is the one frontier node the reference step names.

A concept's value is the probability of its first token. Our word tokenizer keeps every
concept one token, so that is its whole probability; a tokenizer that splits concepts would
make the first token a prefix's probability (an upper bound of the concept's), and a graph
whose concepts share a first token is refused since their values could not be told apart.

`thought_decode_analysis` is the earlier, different probe: the LM head applied at the
position that produces thought t (what the model would say instead of the thought), with no
switch to language.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from minirepro.core.tokenizer import WordTokenizer
from minirepro.papers.coconut.curriculum import (
    BOT,
    EOT,
    Curriculum,
    inference_prompt,
    tokenize_record,
)
from minirepro.papers.coconut.latent import Coconut, latent_columns, left_pad
from minirepro.tasks.prosqa import bfs_depths

__all__ = ["CLASSES", "frontier_analysis", "plot_frontier", "thought_decode_analysis"]

CLASSES = ("visited", "frontier", "later", "unreachable")


def _groups(record: dict[str, Any], tok: WordTokenizer, k: int) -> dict[str, list[int]]:
    """First-token ids of the record's concepts (not the person) by class after k hops."""
    sym = record["idx_to_symbol"]
    depth = bfs_depths(len(sym), record["edges"], record["root"])
    groups: dict[str, list[int]] = {c: [] for c in CLASSES}
    seen: dict[int, str] = {}
    for v, d in enumerate(depth):
        if v == record["root"]:
            continue
        ids = tok.encode(sym[v])
        if not ids or ids[0] == tok.unk_id:
            raise ValueError(f"concept {sym[v]!r} is not in the tokenizer's vocabulary")
        if ids[0] in seen:
            raise ValueError(
                f"concepts {seen[ids[0]]!r} and {sym[v]!r} share their first token; their "
                "values cannot be told apart"
            )
        seen[ids[0]] = sym[v]
        c = "unreachable" if d < 0 else "frontier" if d == k else "visited" if d < k else "later"
        groups[c].append(ids[0])
    return groups


def _zeros(K: int) -> tuple[dict[str, torch.Tensor], ...]:
    """Accumulators per class and thought: mass, per-node mass, records counted."""
    return tuple({c: torch.zeros(K) for c in CLASSES} for _ in range(3))


def _summarise(mass, per_node, counts, gold, n_gold, n: int, K: int, probe: str):
    return {
        "probe": probe,
        "n_thoughts": K,
        "mass": {c: (mass[c] / max(1, n)).tolist() for c in CLASSES},
        "per_node": {c: (per_node[c] / counts[c].clamp(min=1)).tolist() for c in CLASSES},
        **({"gold": (gold / n_gold.clamp(min=1)).tolist()} if gold is not None else {}),
    }


def _accumulate(probs_row, groups, t, mass, per_node, counts) -> None:
    for c, ids_c in groups.items():
        m = float(probs_row[ids_c].sum()) if ids_c else 0.0
        mass[c][t] += m
        if ids_c:
            per_node[c][t] += m / len(ids_c)
            counts[c][t] += 1


def _check(records: Sequence[dict[str, Any]], K: int, batch_size: int) -> None:
    if not records:
        raise ValueError("no records to analyse")
    if K < 1:
        raise ValueError("the curriculum has no thoughts (max_latent_stage * c_thought = 0)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


@torch.no_grad()
def frontier_analysis(
    net: Coconut,
    tok: WordTokenizer,
    records: Sequence[dict[str, Any]],
    cur: Curriculum,
    batch_size: int = 125,
    step_prefix: str = "Every",
) -> dict[str, Any]:
    """The paper's probe: the value of each class of concept after k = 1..K thoughts.

    For each k the prompt is question, <bot>, k·c thoughts, <eot>, ``step_prefix``; the
    model's next-token distribution there is read (one multi-pass forward per k and batch).

    Args:
        net: A trained model (Coconut recycles hidden states; pause feeds <pause> tokens).
        tok: The tokenizer the model was trained with.
        records: ProsQA records (``edges``, ``root``, ``idx_to_symbol``, ``steps``).
        cur: The curriculum (its ``c_thought`` and ``n_thoughts`` = K).
        batch_size: Prompts per forward.
        step_prefix: The words before the next step's first concept ("Every A is a B .").

    Returns:
        ``mass[c][k-1]``: mean total probability on the concepts of class c after k
        thoughts (the classes plus the person and non-concept tokens sum to 1);
        ``per_node[c][k-1]``: the same divided by the class size (mean over records where
        the class is not empty); ``gold[k-1]``: the probability of the reference step's
        node (records with a step k); ``n_thoughts``; ``probe``: "language".
    """
    K, c = cur.n_thoughts // cur.c_thought, cur.c_thought
    _check(records, K, batch_size)
    prefix = tok.encode(step_prefix)
    if not prefix or tok.unk_id in prefix:
        raise ValueError(f"step_prefix {step_prefix!r} is not in the tokenizer's vocabulary")
    thought = net.latent_id
    bot, eot = tok.token_to_id(BOT), tok.token_to_id(EOT)
    mass, per_node, counts = _zeros(K)
    gold, n_gold = torch.zeros(K), torch.zeros(K)
    device = next(net.parameters()).device
    for lo in range(0, len(records), batch_size):
        batch = records[lo : lo + batch_size]
        questions = [tok.encode(r["question"]) for r in batch]
        for k in range(1, K + 1):
            prompts = [[*q, bot, *[thought] * (k * c), eot, *prefix] for q in questions]
            ids, docs = left_pad(prompts, [len(p) for p in prompts], tok.pad_id)
            probs = net(ids.to(device), docs.to(device))[:, -1].float().softmax(-1).cpu()
            for b, r in enumerate(batch):
                _accumulate(probs[b], _groups(r, tok, k), k - 1, mass, per_node, counts)
                if k < len(r["steps"]):
                    words = tok.encode(r["steps"][k])
                    if words[: len(prefix)] == prefix and len(words) > len(prefix):
                        gold[k - 1] += float(probs[b, words[len(prefix)]])
                        n_gold[k - 1] += 1
    return _summarise(mass, per_node, counts, gold, n_gold, len(records), K, "language")


@torch.no_grad()
def thought_decode_analysis(
    net: Coconut,
    tok: WordTokenizer,
    records: Sequence[dict[str, Any]],
    cur: Curriculum,
    batch_size: int = 125,
) -> dict[str, Any]:
    """The LM head read at the position that produces each thought (no switch to language).

    Concepts are grouped as in `frontier_analysis` with frontier = depth t for thought t.

    Returns:
        ``mass[c][t]``: mean total probability on the concepts of class c decoded from
        thought t+1; ``per_node[c][t]``; ``n_thoughts``; ``probe``: "thought".
    """
    if not net.recycle:
        raise ValueError("the thought decoding reads continuous thoughts; recycle is off")
    K = cur.n_thoughts
    _check(records, K, batch_size)
    mass, per_node, counts = _zeros(K)
    device = next(net.parameters()).device
    for lo in range(0, len(records), batch_size):
        batch = records[lo : lo + batch_size]
        prompts = [inference_prompt(tokenize_record(tok, r), "coconut", cur, tok) for r in batch]
        ids, docs = left_pad(prompts, [len(p) for p in prompts], tok.pad_id)
        logits = net(ids.to(device), docs.to(device))  # (B, S, V)
        cols = latent_columns(ids, net.latent_id)
        probs = logits[:, [col - 1 for col in cols]].float().softmax(-1).cpu()  # (B, K, V)
        for b, r in enumerate(batch):
            for t in range(K):
                _accumulate(probs[b, t], _groups(r, tok, t + 1), t, mass, per_node, counts)
    return _summarise(mass, per_node, counts, None, None, len(records), K, "thought")


def plot_frontier(analyses: Sequence[dict[str, Any]], title: str = "Coconut"):
    """A figure of the mass per class (and the reference step's node, where measured)
    against the number of thoughts, averaged over analyses (one per seed). Returns the
    matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not analyses:
        raise ValueError("no analyses to plot")
    K = analyses[0]["n_thoughts"]
    language = analyses[0].get("probe", "thought") == "language"
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, label in [
        (axes[0], "mass", "total probability"),
        (axes[1], "per_node", "probability per concept"),
    ]:
        for c in CLASSES:
            ys = torch.tensor([a[key][c] for a in analyses]).mean(0)
            ax.plot(range(1, K + 1), ys, marker="o", label=c)
        if key == "mass" and all("gold" in a for a in analyses):
            ys = torch.tensor([a["gold"] for a in analyses]).mean(0)
            ax.plot(range(1, K + 1), ys, marker="x", linestyle="--", label="reference step's node")
        ax.set_xlabel(
            "thoughts k, then <eot> Every ___" if language else "thought t (LM head on it)"
        )
        ax.set_ylabel(label)
        ax.set_xticks(range(1, K + 1))
    axes[0].legend(fontsize=8)
    what = "value of the next step's node" if language else "thoughts decoded"
    fig.suptitle(f"{title}: {what}, concepts by BFS depth (frontier = depth k)")
    fig.tight_layout()
    return fig
