"""Features of a response × prompt relevance matrix, as LRP4RAG builds them.

The reference (core/classifier.py) averages each response token's relevance over the prompt
(`dst_relevance`), then bin-averages that vector to a fixed length (235 there, 220 in the
paper's text) for the SVM, random forest and MLP; the LSTM reads the whole matrix
bin-averaged to a fixed (rows, cols) grid. Bin averages here are area interpolation
(`adaptive_avg_pool`): exact means when shrinking, repeated values when stretching (the
reference leaves empty bins at 0 when a response is shorter than the target length).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FEATURE_LEN", "matrix_features", "resample_1d", "resample_2d", "token_means"]

FEATURE_LEN = 220  # "we resample the relevance vector to a fixed length of 220"


def _as_tensor(x: Tensor | np.ndarray | Sequence, ndim: int, name: str) -> Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, Tensor) else x)
    if t.ndim != ndim or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty {ndim}-D array, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return t.float()


def resample_1d(x: Tensor | np.ndarray | Sequence[float], length: int = FEATURE_LEN) -> Tensor:
    """Bin-average a vector (n,) to (length,)."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    t = _as_tensor(x, 1, "x")
    return F.adaptive_avg_pool1d(t[None, None], length)[0, 0]


def resample_2d(x: Tensor | np.ndarray, shape: tuple[int, int]) -> Tensor:
    """Bin-average a matrix (n, m) to `shape` (rows, cols)."""
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be two positive sizes, got {shape}")
    t = _as_tensor(x, 2, "x")
    return F.adaptive_avg_pool2d(t[None, None], tuple(shape))[0, 0]


def token_means(prompt_relevance: Tensor | np.ndarray) -> Tensor:
    """(n_response,) mean relevance of the prompt for each response token.

    Args:
        prompt_relevance: (n_response, n_prompt), e.g. `Relevance.prompt`.
    """
    return _as_tensor(prompt_relevance, 2, "prompt_relevance").mean(1)


def matrix_features(
    matrices: Sequence[Tensor | np.ndarray],
    length: int = FEATURE_LEN,
    grid: tuple[int, int] | None = None,
) -> np.ndarray:
    """Stack the features of many response × prompt matrices.

    Args:
        matrices: one (n_response, n_prompt) matrix per sample; sizes may differ.
        length: length of the resampled per-token means (grid=None).
        grid: (rows, cols) of the 2-D resampling for the LSTM instead.
    Returns:
        (N, length), or (N, rows, cols) with a grid; float32.
    """
    if not matrices:
        raise ValueError("no relevance matrices given")
    if grid is None:
        feats = [resample_1d(token_means(m), length) for m in matrices]
    else:
        feats = [resample_2d(m, grid) for m in matrices]
    return torch.stack(feats).numpy()
