"""Reading p(Yes) from a causal LM: the score of a generative verifier.

A verification input ends with the instruction I ("Is the answer correct (Yes/No)?"; in
our character format the single token ``<ans>``). The logits at I's position -- the last
token of each sequence -- predict the next token, and the score is

    r = p(Yes | x, y, I) = softmax(logits)[yes_id]          (normalize="softmax", the paper)
    r = p(Yes) / (p(Yes) + p(No))                            (normalize="yes_no")

Sequences of different lengths are batched with padding on either side; padding never
changes a score: right padding sits after the read position of a causal model, and left
padding is masked and its positions skipped (``document_ids`` for the core decoder,
``attention_mask`` + ``position_ids`` for an HF causal LM).

Any core `Transformer` (the tiny verifiers; SmolLM2 from `minirepro.core.pretrained`) and any
HF causal LM (``transformers`` ``*ForCausalLM``) works.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from minirepro.core.documents import left_pad_document_ids

__all__ = ["Normalize", "Padding", "last_logits", "p_yes", "yes_scores"]

Padding = Literal["right", "left"]
Normalize = Literal["softmax", "yes_no"]


def _is_hf(model: nn.Module) -> bool:
    return hasattr(model, "config") and not hasattr(model, "new_cache")


def _pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int, padding: Padding
) -> tuple[Tensor, Tensor]:
    """Ids (B, S) and a mask (B, S) of real tokens, padded on ``padding``'s side."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        lo = 0 if padding == "right" else width - len(s)
        ids[i, lo : lo + len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, lo : lo + len(s)] = 1
    return ids, mask


@torch.inference_mode()
def last_logits(
    model: nn.Module,
    seqs: Sequence[Sequence[int]],
    *,
    pad_id: int = 0,
    padding: Padding = "right",
    batch_size: int = 64,
) -> Tensor:
    """Logits at the last token of each sequence: (N, V) float32.

    Args:
        model: A core `Transformer` (``model(ids) -> (B, S, V)``) or an HF causal LM.
        seqs: (N,) token id lists, each non-empty.
        pad_id: Padding id (never read).
        padding: "right" or "left".
        batch_size: Sequences per forward pass.
    """
    if padding not in ("right", "left"):
        raise ValueError(f"padding must be 'right' or 'left', got {padding!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if any(len(s) == 0 for s in seqs):
        raise ValueError("every sequence needs at least one token")
    hf = _is_hf(model)
    out = []
    for b in range(0, len(seqs), batch_size):
        chunk = seqs[b : b + batch_size]
        ids, mask = _pad_batch(chunk, pad_id, padding)  # (B, S)
        device = next(model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        if hf:
            pos = (mask.cumsum(1) - 1).clamp(min=0)  # (B, S): 0 at each row's first token
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        elif padding == "left":
            docs = left_pad_document_ids(mask.sum(1).cpu(), ids.shape[1]).to(device)
            logits = model(ids, document_ids=docs)
        else:
            logits = model(ids)  # (B, S, V); right padding comes after every read position
        last = mask.sum(1) - 1 if padding == "right" else torch.full_like(mask[:, 0], -1)
        rows = torch.arange(len(chunk), device=device)
        out.append(logits[rows, last].float())  # (B, V)
    return torch.cat(out) if out else torch.empty(0, 0)


def p_yes(logits: Tensor, yes_id: int, no_id: int, normalize: Normalize = "softmax") -> Tensor:
    """The verifier score from next-token logits (N, V): (N,) in [0, 1].

    Args:
        logits: Next-token logits at the instruction's position.
        yes_id, no_id: Token ids of "Yes" and "No".
        normalize: "softmax": p(Yes) over the whole vocabulary (the paper's r = p(Yes));
            "yes_no": p(Yes) / (p(Yes) + p(No)), which ignores mass on other tokens.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, V), got shape {tuple(logits.shape)}")
    V = logits.shape[1]
    if not (0 <= yes_id < V and 0 <= no_id < V) or yes_id == no_id:
        raise ValueError(f"yes_id {yes_id} and no_id {no_id} must be distinct ids in [0, {V})")
    logits = logits.float()
    if normalize == "softmax":
        return logits.softmax(-1)[:, yes_id]
    if normalize == "yes_no":
        return logits[:, [yes_id, no_id]].softmax(-1)[:, 0]
    raise ValueError(f"normalize must be 'softmax' or 'yes_no', got {normalize!r}")


def yes_scores(
    model: nn.Module,
    seqs: Sequence[Sequence[int]],
    yes_id: int,
    no_id: int,
    *,
    pad_id: int = 0,
    padding: Padding = "right",
    normalize: Normalize = "softmax",
    batch_size: int = 64,
) -> Tensor:
    """p(Yes) after each sequence (each ends with the instruction I): (N,) float32."""
    logits = last_logits(model, seqs, pad_id=pad_id, padding=padding, batch_size=batch_size)
    return p_yes(logits, yes_id, no_id, normalize)
