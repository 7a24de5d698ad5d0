"""Preparing a user's pretrained transformers model and tokenizer for Coconut.

The paper starts from pretrained GPT-2: the reference adds its three markers to the
tokenizer, grows the embedding table, and starts each new row as a copy of an existing
token's embedding, so the new tokens begin somewhere the model already reads. Our models in
`repro` are trained from scratch and need none of this; a user plugging in their own
`AutoModelForCausalLM` does:

    >>> ids = add_thought_tokens(model, tokenizer)        # doctest: +SKIP
    >>> net = Coconut(model, latent_id=ids[LATENT])       # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from minirepro.papers.coconut.curriculum import BOT, EOT, LATENT, PAUSE

__all__ = ["THOUGHT_TOKENS", "add_thought_tokens"]

THOUGHT_TOKENS = (BOT, EOT, LATENT, PAUSE)


@torch.no_grad()
def add_thought_tokens(
    model: nn.Module,
    tokenizer: Any,
    init_token: str | None = None,
    tokens: Sequence[str] = THOUGHT_TOKENS,
) -> dict[str, int]:
    """Add Coconut's marker tokens to a transformers tokenizer and model.

    Tokens the tokenizer already has keep their ids and embeddings (calling this twice
    changes nothing). New tokens are added as special tokens (never split), the model's
    input embeddings, and its output embeddings where they are not tied to the inputs, are
    grown to the tokenizer's length, and each new row starts as a copy of ``init_token``'s
    row (the reference copies "<<"), or of the mean row when ``init_token`` is None.

    Args:
        model: A transformers `PreTrainedModel` with a language-model head.
        tokenizer: Its transformers tokenizer.
        init_token: A token (one id) whose embedding the new rows copy; None: the mean.
        tokens: The tokens to add (`<bot>`, `<eot>`, `<latent>`, `<pause>`).

    Returns:
        Token -> id, for every token of ``tokens``.

    Raises:
        ValueError: ``init_token`` is not one token of the tokenizer, or the model has no
            embeddings to grow.
    """
    for name in ("add_tokens", "convert_tokens_to_ids", "get_vocab"):
        if not hasattr(tokenizer, name):
            raise ValueError(f"tokenizer has no {name}(): pass a transformers tokenizer")
    if not hasattr(model, "get_input_embeddings") or not hasattr(model, "resize_token_embeddings"):
        raise ValueError("model has no input embeddings to grow: pass a transformers model")
    src = None
    if init_token is not None:
        src = tokenizer.get_vocab().get(init_token)
        if src is None:
            raise ValueError(
                f"init_token {init_token!r} is not a single token of the tokenizer "
                f"(encodes to {tokenizer.encode(init_token, add_special_tokens=False)})"
            )
    vocab = tokenizer.get_vocab()
    new = [t for t in tokens if t not in vocab]
    if new:
        tokenizer.add_tokens(list(new), special_tokens=True)
        emb_in = model.get_input_embeddings()
        old = emb_in.weight.shape[0]
        # the new rows are overwritten below: no need for transformers' mean resizing
        model.resize_token_embeddings(max(len(tokenizer), old), mean_resizing=False)
        rows = [tokenizer.convert_tokens_to_ids(t) for t in new]
        tables = [model.get_input_embeddings().weight]
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if out is not None and out.weight.data_ptr() != tables[0].data_ptr():
            tables.append(out.weight)
        for w in tables:
            fill = (w[src] if src is not None else w[:old].mean(0)).clone()
            w[rows] = fill.to(w.dtype)
    return {t: int(tokenizer.convert_tokens_to_ids(t)) for t in tokens}
