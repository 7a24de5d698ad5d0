"""A slow, obviously-correct oracle for the continuous-thought forward.

`naive_latent_forward` recomputes the whole sequence from scratch at every pass, with no
cache: pass i fills latent i with the hidden state that the full recomputation gives at
the position before it. `Coconut.forward` must match it (tests check outputs and
gradients for the core decoder and HF Llama).
"""

from __future__ import annotations

import torch
from torch import Tensor

from minirepro.papers.coconut.latent import Coconut, latent_columns

__all__ = ["naive_latent_forward"]


def naive_latent_forward(
    net: Coconut, idx: Tensor, document_ids: Tensor | None = None, *, detach: bool = False
) -> tuple[Tensor, Tensor]:
    """Logits (B, S, V) and hidden states (B, S, d_model), one full pass per latent.

    Args:
        net: The Coconut model (its backbone and latent id are used, not its forward).
        idx: (B, S) token ids (rows may hold different numbers of latents).
        document_ids: (B, S) 0 on padding, 1 on tokens, or None.
        detach: Cut the gradient through the recycled hidden states (what a forward that
            failed to backpropagate through its thoughts would compute; tests contrast it).
    """
    embeds = net.lm.embed(idx)  # (B, S, d_model)
    mask = None if document_ids is None or bool(document_ids.all()) else document_ids
    for col in latent_columns(idx, net.latent_id) if net.recycle else []:
        _, h = net.lm.run(embeds, None, 0, mask)  # recompute everything
        rows = idx[:, col] == net.latent_id  # rows with a latent here (B,)
        keep = torch.ones_like(embeds)
        keep[rows, col] = 0
        filled = torch.zeros_like(embeds)
        prev = h[:, col - 1].detach() if detach else h[:, col - 1]
        filled[rows, col] = prev[rows]
        embeds = embeds * keep + filled  # out of place, so gradients reach every pass
    return net.lm.run(embeds, None, 0, mask)
