"""The continuous-thought forward: each latent token's input is the last hidden state before it.

A sequence with n latent tokens takes n + 1 passes through the decoder. Pass 0 reads every
token before the first latent; pass i reads from latent i-1 up to latent i, with the input
of latent i-1 replaced by the final-norm hidden state at the position before it (the
"continuous thought"); the last pass reads the rest. Each pass continues the KV cache of
the ones before, so no position is computed twice, and gradients flow through the
recycled hidden states into every earlier pass (the cache is built by concatenation, not
written in place, while autograd records).

The same code drives two backbones through a small adapter (`as_backbone`): the core
decoder (`minirepro.core.model.Transformer`) and a transformers causal LM
(`LlamaForCausalLM`, GPT-2, ...), whose KV cache is a `DynamicCache`.

Padding: rows are left-padded so their latent tokens start at the same column (the
reference's collator does the same); a row with fewer latents than another keeps its own
tokens' embeddings at the other's extra latent columns. ``document_ids`` marks padding with 0 and tokens with
1 (`minirepro.core.documents.left_pad_document_ids`); the core decoder keeps padding out
of attention and positions with it, an HF model gets it as ``attention_mask``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from minirepro.core.generate import SamplingParams, decode_from
from minirepro.core.model import Cache, Transformer

__all__ = [
    "Coconut",
    "CoreBackbone",
    "HFBackbone",
    "as_backbone",
    "latent_columns",
    "left_pad",
]


class _GrowingKV:
    """Keys and values of one attention layer, grown by concatenation (autograd-safe)."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def update(self, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        held = 0 if self.k is None else self.k.shape[2]
        if start != held:
            raise ValueError(f"cache holds {held} positions, asked to write at {start}")
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)  # (B, Hkv, T, D)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


class CoreBackbone(nn.Module):
    """Adapter for the core decoder: embed ids, run embeddings on a cache, new caches."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        for i, block in enumerate(model.layers):
            if not hasattr(block.mixer, "wq"):
                raise ValueError(f"layer {i} is not attention; Coconut needs a KV cache")
        self.model = model

    @property
    def vocab_size(self) -> int:
        return self.model.cfg.vocab_size

    def embed(self, ids: Tensor) -> Tensor:
        return self.model.embed(ids)

    def new_cache(self, batch_size: int, max_len: int) -> Cache:
        if torch.is_grad_enabled():  # training through the cache: no in-place writes
            return Cache([_GrowingKV() for _ in self.model.layers], max_len)
        return self.model.new_cache(batch_size, max_len)

    def run(
        self, embeds: Tensor, cache: Any, start: int, mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Logits (B, S, V) and final-norm hidden states (B, S, d_model) of ``embeds``,
        which sit at positions start..start+S-1; ``mask`` (B, >= start+S), 0 on padding."""
        docs = None if mask is None else mask[:, start : start + embeds.shape[1]].long()
        h = self.model(None, cache, embeds=embeds, document_ids=docs, return_hidden=True)
        return self.model.lm_head(h), h


class HFBackbone(nn.Module):
    """Adapter for a transformers causal LM with ``inputs_embeds`` and a DynamicCache."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        for attr in ("get_input_embeddings", "get_output_embeddings", "base_model"):
            if not hasattr(model, attr):
                raise TypeError(f"{type(model).__name__} is not a transformers causal LM")
        self.model = model
        # transformers 5.x renames `past_key_values` to `cache` (with a deprecation period)
        params = inspect.signature(model.base_model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().num_embeddings

    def embed(self, ids: Tensor) -> Tensor:
        return self.model.get_input_embeddings()(ids)

    def new_cache(self, batch_size: int, max_len: int) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def run(
        self, embeds: Tensor, cache: Any, start: int, mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        B, S, _ = embeds.shape
        if mask is None:
            mask = torch.ones(B, start + S, dtype=torch.long, device=embeds.device)
        mask = mask[:, : start + S].long()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, start:]  # (B, S), 0 at each row's start
        cache_kw = {self._cache_arg: cache} if cache is not None else {}
        out = self.model.base_model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            use_cache=cache is not None,
            **cache_kw,
        )
        h = out.last_hidden_state  # (B, S, d_model), after the final norm
        return self.model.get_output_embeddings()(h), h


def as_backbone(model: nn.Module) -> nn.Module:
    """Wrap the core decoder or a transformers causal LM in its adapter."""
    if isinstance(model, (CoreBackbone, HFBackbone)):
        return model
    if isinstance(model, Transformer):
        return CoreBackbone(model)
    return HFBackbone(model)


def latent_columns(ids: Tensor, latent_id: int) -> list[int]:
    """Columns that hold a latent token in at least one row of ``ids`` (B, S).

    Rows may hold different numbers of latents (the reference's ``uniform_prob`` mixes
    stages in one batch); each column starts a pass, and a row whose token there is not a
    latent keeps its own embedding.

    Raises:
        ValueError: if a latent is the first token (it has no hidden state before it).
    """
    is_latent = ids == latent_id  # (B, S)
    cols = is_latent.any(0).nonzero().flatten().tolist()
    if cols and cols[0] == 0:
        raise ValueError("a latent token cannot be the first token of a row")
    return cols


class Coconut(nn.Module):
    """A causal LM whose latent tokens take the previous position's last hidden state.

    Args:
        model: The core `Transformer` or a transformers causal LM.
        latent_id: Id of the latent token. Its own embedding is never used when
            ``recycle`` is on.
        recycle: False gives pause-as-thought: the latent token keeps its learned
            embedding and the forward is one ordinary pass.

    Example:
        >>> net = Coconut(Transformer(ModelConfig(vocab_size=50, d_model=32)), latent_id=7)
        >>> logits = net(torch.tensor([[3, 4, 7, 7, 5]]))  # 3 passes; (1, 5, 50)
    """

    def __init__(self, model: nn.Module, latent_id: int, recycle: bool = True) -> None:
        super().__init__()
        self.lm = as_backbone(model)
        if not 0 <= latent_id < self.lm.vocab_size:
            raise ValueError(f"latent_id={latent_id} outside the vocabulary")
        self.latent_id = latent_id
        self.recycle = recycle

    def forward(
        self, idx: Tensor, document_ids: Tensor | None = None, *, return_hidden: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Logits (B, S, V) of token ids ``idx`` (B, S).

        Args:
            idx: Token ids; rows left-padded so their first latents share a column
                (`left_pad`); rows may hold different numbers of latents.
            document_ids: (B, S) 0 on padding, nonzero (1) on tokens; None without padding.
            return_hidden: Also return the final-norm hidden states (B, S, d_model).
        """
        logits, hidden, _ = self.prefill(idx, document_ids, cache=False)
        return (logits, hidden) if return_hidden else logits

    def prefill(
        self,
        idx: Tensor,
        document_ids: Tensor | None = None,
        *,
        cache: bool = True,
        extra_len: int = 0,
    ) -> tuple[Tensor, Tensor, Any]:
        """The multi-pass forward; returns logits, hidden states and the cache it filled
        (room for ``extra_len`` more positions; None with ``cache=False`` and no latents:
        one plain pass)."""
        if idx.ndim != 2:
            raise ValueError(f"idx must be (batch, seq) token ids, got shape {tuple(idx.shape)}")
        if document_ids is not None and document_ids.shape != idx.shape:
            raise ValueError(
                f"document_ids {tuple(document_ids.shape)} must match idx {tuple(idx.shape)}"
            )
        pad = None if document_ids is None else document_ids == 0  # (B, S)
        mask = None if pad is None or not bool(pad.any()) else (~pad).long()
        B, S = idx.shape
        embeds = self.lm.embed(idx)  # (B, S, d_model)
        cols = latent_columns(idx, self.latent_id) if self.recycle else []
        is_latent = idx == self.latent_id  # (B, S)
        kv = self.lm.new_cache(B, S + extra_len) if cols or cache else None
        logits, hidden, start, thought = [], [], 0, None
        for end in [*cols, S]:
            chunk = embeds[:, start:end]  # (B, end - start, d_model)
            if thought is not None:  # a latent at `start` takes the previous hidden state
                first = torch.where(is_latent[:, start, None], thought, chunk[:, 0])
                chunk = torch.cat([first[:, None], chunk[:, 1:]], dim=1)
            lg, h = self.lm.run(chunk, kv, start, mask)
            logits.append(lg)
            hidden.append(h)
            thought, start = h[:, -1], end
        return torch.cat(logits, dim=1), torch.cat(hidden, dim=1), kv

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop_tokens: Sequence[int] = (),
    ) -> list[list[int]]:
        """Greedy continuations of prompts that end with their latent tokens and markers.

        Prompts are left-padded to a common length; every prompt must hold the same
        number of latent tokens after its question (so they align), e.g. question, <bot>,
        n latents, <eot>: inference with a fixed number of thoughts.

        Returns:
            For each prompt, the generated ids without the stop token.
        """
        ids, docs = left_pad([list(p) for p in prompts], [len(p) for p in prompts])
        device = next(self.parameters()).device
        ids, docs = ids.to(device), docs.to(device)
        logits, _, kv = self.prefill(ids, docs, cache=True, extra_len=max_new_tokens)
        mask = docs if not bool(docs.all()) else None
        pos = ids.shape[1]

        def step(token: Tensor) -> Tensor:
            nonlocal pos, mask
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            lg, _ = self.lm.run(self.lm.embed(token[:, None]), kv, pos, mask)
            pos += 1
            return lg[:, -1]

        params = SamplingParams(max_new_tokens=max_new_tokens, stop_tokens=tuple(stop_tokens))
        steps = list(decode_from(step, logits[:, -1], params))  # each (B,)
        if not steps:
            return [[] for _ in prompts]
        stop, out = set(params.stop_tokens), []
        for r in torch.stack(steps, dim=1).tolist():  # (B, steps)
            out.append(r[: next((i for i, t in enumerate(r) if t in stop), len(r))])
        return out


def left_pad(
    rows: Sequence[Sequence[int]], align: Sequence[int], pad_id: int = 0
) -> tuple[Tensor, Tensor]:
    """Pad rows so column ``align[i]`` of row i lands on one shared column.

    Rows are padded on the left by ``max(align) - align[i]`` and then on the right to a
    common length.

    Returns:
        ids (B, S) and document ids (B, S): 0 on padding, 1 on each row's tokens.
    """
    if len(rows) != len(align) or not rows:
        raise ValueError("need one alignment column per row, and at least one row")
    left = [max(align) - a for a in align]
    width = max(p + len(r) for p, r in zip(left, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    docs = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (p, r) in enumerate(zip(left, rows)):
        ids[i, p : p + len(r)] = torch.as_tensor(r, dtype=torch.long)
        docs[i, p : p + len(r)] = 1
    return ids, docs
