"""Accuracy of a next-vertex model, overall and per lookahead."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from minirepro.tasks.dag_search import SearchBatch, SearchVocab, generate_batch

__all__ = ["accuracy", "accuracy_by_lookahead", "predict"]


@torch.no_grad()
def predict(model: nn.Module, tokens: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """The model's next vertex (argmax of the last position's logits) per row: (B,)."""
    model.eval()
    out = []
    for i in range(0, len(tokens), batch_size):
        x = torch.from_numpy(tokens[i : i + batch_size])
        out.append(model(x)[:, -1].argmax(-1).numpy())
    return np.concatenate(out)


def accuracy(model: nn.Module, batch: SearchBatch) -> float:
    """Fraction of examples whose predicted vertex is in the answer set."""
    pred = predict(model, batch.tokens)
    return float(batch.answers[np.arange(len(batch)), pred].mean())


def accuracy_by_lookahead(
    model: nn.Module,
    max_input_size: int,
    n: int = 500,
    seed: int = 12345,
    lookaheads: list[int] | None = None,
) -> dict[int, float]:
    """Accuracy on `n` balanced examples of each lookahead (default 0..max), held-out seed."""
    vocab = SearchVocab(max_input_size)
    lookaheads = list(range(vocab.max_lookahead + 1)) if lookaheads is None else lookaheads
    rng = np.random.default_rng(seed)
    return {
        L: accuracy(model, generate_batch(n, max_input_size, "balanced", L, rng=rng))
        for L in lookaheads
    }  # fmt: skip
