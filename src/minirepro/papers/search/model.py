"""The search model: the core decoder, optionally with the reference's one-hot embedding.

The reference (asaparov/learning_to_search, gpt2/transformer.py) feeds its transformer a
fixed, untrained input: the one-hot token vector (padded with zeros to the hidden width)
concatenated with the one-hot position vector. `OneHotEmbedding` is that input for the
core decoder, registered as ``ModelConfig(embedding="onehot")``: tokens occupy dimensions
[0, vocab_size), positions the last max_seq_len dimensions, and the dimensions between
start at zero, free for the layers to write into.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minirepro.core.model import ModelConfig, Transformer, register_embedding
from minirepro.tasks.dag_search import SearchVocab

__all__ = ["EMBEDDINGS", "OneHotEmbedding", "make_search_model"]

EMBEDDINGS = ("onehot", "learned")


class OneHotEmbedding(nn.Module):
    """Fixed one-hot token and position vectors side by side: (B, S) -> (B, S, d_model)."""

    takes_positions = True

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.d_model < cfg.vocab_size + cfg.max_seq_len:
            raise ValueError(
                f"the one-hot embedding needs d_model >= vocab_size + max_seq_len = "
                f"{cfg.vocab_size} + {cfg.max_seq_len}, got d_model={cfg.d_model}"
            )
        self.vocab_size, self.max_seq_len, self.d_model = (
            cfg.vocab_size,
            cfg.max_seq_len,
            cfg.d_model,
        )

    def forward(self, idx: Tensor, positions: Tensor) -> Tensor:
        B, S = idx.shape
        tok = F.one_hot(idx, self.vocab_size).float()  # (B, S, V)
        pos = F.one_hot(positions, self.max_seq_len).float().expand(B, S, -1)  # (B, S, P)
        gap = self.d_model - self.vocab_size - self.max_seq_len
        return torch.cat([tok, tok.new_zeros(B, S, gap), pos], dim=-1)  # (B, S, d_model)


register_embedding("onehot", OneHotEmbedding)


def make_search_model(
    max_input_size: int,
    n_layer: int = 4,
    d_model: int = 64,
    n_head: int = 1,
    embedding: str = "onehot",
    d_ff: int | None = None,
) -> Transformer:
    """A core decoder sized for the search task.

    Args:
        max_input_size: The task's sequence length (fixes the vocabulary).
        n_layer: Transformer layers.
        d_model: Residual width; with ``embedding="onehot"`` this includes the
            vocab_size + max_input_size one-hot dimensions.
        n_head: Attention heads ("1 head per layer" in the reference).
        embedding: "onehot" (the reference's fixed input) or "learned" (`nn.Embedding`).
        d_ff: MLP width (default: the core's 8/3 d_model).
    """
    if embedding not in EMBEDDINGS:
        raise ValueError(f"unknown embedding {embedding!r}; choose one of {EMBEDDINGS}")
    vocab = SearchVocab(max_input_size)
    cfg = ModelConfig(
        vocab_size=vocab.vocab_size,
        n_layer=n_layer,
        n_head=n_head,
        d_model=d_model,
        d_ff=d_ff,
        max_seq_len=max_input_size,
        embedding=embedding,
        tie_embeddings=embedding == "learned",
    )
    return Transformer(cfg)
