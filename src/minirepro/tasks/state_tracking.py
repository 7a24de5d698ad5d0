"""State-tracking tasks: running parity and modular counting of a token stream.

Each position's target is a function of the whole prefix (the parity of the ones so far, or
their count mod m), so a model must carry a state along the sequence. Recurrent networks
do this with a few units; transformers without recurrence are known to fail on long
sequences and to not length-generalise (the xLSTM and FlashRNN papers' motivation).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["modular_count_batch", "parity_batch"]


def modular_count_batch(
    batch_size: int, seq_len: int, modulus: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Inputs x in {0, 1} (B, S) and targets y = (x_1 + ... + x_t) mod `modulus` (B, S).

    The token ids are the values themselves: vocab_size >= max(2, modulus).
    """
    x = torch.randint(0, 2, (batch_size, seq_len), generator=generator)
    return x, x.cumsum(1) % modulus


def parity_batch(
    batch_size: int, seq_len: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Running parity: `modular_count_batch` with modulus 2."""
    return modular_count_batch(batch_size, seq_len, 2, generator)
