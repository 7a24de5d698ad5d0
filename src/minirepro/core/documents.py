"""Packed documents in one row: positions that restart per document and a block-diagonal
causal mask, so each document is computed as if it were alone in its row.

A row's *document ids* (one integer per token) mark where documents lie: a document is a
maximal run of equal ids, so ``[7, 7, 7, 0, 0, 3]`` holds three documents. Left or right
padding is just another document (its own id) whose outputs nobody reads.

`Transformer.forward(idx, document_ids=...)` uses these helpers; with a KV cache, tokens
that come without ids continue the last document of their row (decoding after a
left-padded prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "DocumentLayout",
    "check_document_ids",
    "document_layout",
    "left_pad_document_ids",
]


@dataclass
class DocumentLayout:
    """Where the queries of one forward pass sit within their documents.

    Attributes:
        positions: (B, S) position of each query within its document (0 at its first token).
        mask: (B, 1, S, T) True where query i may attend to key j: j <= i (causal) and j in
            the same document. Broadcasts over heads.
    """

    positions: Tensor
    mask: Tensor


def check_document_ids(document_ids: Tensor, shape: tuple[int, int]) -> None:
    """Raise ValueError unless ``document_ids`` are integers of the tokens' shape (B, S)."""
    if document_ids.shape != shape:
        raise ValueError(
            f"document_ids must have the shape of the token ids {shape}, "
            f"got {tuple(document_ids.shape)}"
        )
    if document_ids.is_floating_point() or document_ids.is_complex():
        raise ValueError(f"document_ids must be integers, got dtype {document_ids.dtype}")


def document_layout(all_ids: Tensor, q_start: int) -> DocumentLayout:
    """Positions and attention mask of the queries ``q_start..T-1`` of rows ``all_ids``.

    Args:
        all_ids: (B, T) document ids of every key: the cached tokens, then the new ones.
        q_start: Index of the first query (the number of cached tokens).

    Returns:
        The queries' `DocumentLayout` (S = T - q_start queries).
    """
    B, T = all_ids.shape
    idx = torch.arange(T, device=all_ids.device)
    starts = torch.ones_like(all_ids, dtype=torch.bool)  # (B, T): a document begins here
    starts[:, 1:] = all_ids[:, 1:] != all_ids[:, :-1]
    run = starts.long().cumsum(1)  # (B, T): which document (1, 2, ...) each token is in
    first = torch.where(starts, idx, 0).cummax(1).values  # (B, T): index of its first token
    positions = (idx - first)[:, q_start:]  # (B, S)
    q_run = run[:, q_start:]  # (B, S)
    causal = idx[None, :] <= idx[q_start:, None]  # (S, T)
    mask = (q_run[:, :, None] == run[:, None, :]) & causal  # (B, S, T)
    return DocumentLayout(positions, mask[:, None])


def left_pad_document_ids(lengths: Tensor | list[int], seq_len: int) -> Tensor:
    """Document ids of a left-padded batch: 0 on the padding, 1 on each row's tokens.

    Args:
        lengths: (B,) number of real tokens per row, each in [1, seq_len].
        seq_len: Row length S.

    Returns:
        (B, S) long ids; pass them as ``document_ids`` so padding is neither attended to nor
        counted in the positions.
    """
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    if lengths.ndim != 1 or bool((lengths < 1).any()) or bool((lengths > seq_len).any()):
        raise ValueError(f"lengths must be a 1-D list of values in [1, {seq_len}]")
    return (torch.arange(seq_len)[None, :] >= seq_len - lengths[:, None]).long()
