"""One interface over the two kinds of causal LM that WiM runs on.

WiM needs five things from a model: a fresh KV cache, feeding token ids into it (chunked
prefill and one decoding step are the same call), its length, cropping it back to a length
(so a margin leaves no positions behind), and a tokenizer with a chat template.

- `CoreLM`: the core `Transformer` (e.g. the real SmolLM2 from `load_smollm2`), whose
  preallocated `Cache` crops by moving its position back;
- `HFLM`: any transformers causal LM with a `DynamicCache` (`crop(-n)` removes n tokens).

`as_lm(model, tokenizer)` picks the right one.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from minirepro.core.generate import SamplingParams, decode_from

__all__ = ["CoreLM", "HFLM", "LM", "as_lm", "chat_frame", "generate_text", "prefill"]


class LM(ABC):
    """A causal LM with a tokenizer, behind the calls WiM makes.

    Attributes:
        model: the wrapped model.
        tokenizer: HF-style tokenizer (`encode`, `decode`, optionally a chat template).
        stop_tokens: ids that end a generated turn.
    """

    def __init__(self, model: Any, tokenizer: Any, stop_tokens: Sequence[int] | None = None):
        self.model = model
        self.tokenizer = tokenizer
        if stop_tokens is None:
            stops = {getattr(tokenizer, "eos_token_id", None)}
            if hasattr(tokenizer, "convert_tokens_to_ids"):
                im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
                if im_end != getattr(tokenizer, "unk_token_id", None):
                    stops.add(im_end)
            stop_tokens = sorted(t for t in stops if isinstance(t, int))
        self.stop_tokens = tuple(int(t) for t in stop_tokens)

    # -- the cache
    @abstractmethod
    def new_cache(self, max_len: int | None = None) -> Any:
        """An empty KV cache for one sequence of up to `max_len` positions."""

    @abstractmethod
    def forward(self, ids: Tensor, cache: Any) -> Tensor:
        """Feed ids (1, S) after what `cache` holds; returns logits (1, S, V)."""

    @abstractmethod
    def cache_len(self, cache: Any) -> int:
        """Positions the cache holds."""

    @abstractmethod
    def crop(self, cache: Any, length: int) -> None:
        """Forget every position >= length."""

    @property
    @abstractmethod
    def max_len(self) -> int:
        """The most positions the model takes."""

    # -- text
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens added around it."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


class CoreLM(LM):
    """The core `Transformer` (and everything plugged into it)."""

    def new_cache(self, max_len: int | None = None) -> Any:
        return self.model.new_cache(1, max_len or self.max_len)

    def forward(self, ids: Tensor, cache: Any) -> Tensor:
        return self.model(ids, cache)

    def cache_len(self, cache: Any) -> int:
        return cache.pos

    def crop(self, cache: Any, length: int) -> None:
        cache.crop(length)

    @property
    def max_len(self) -> int:
        return self.model.cfg.max_seq_len


class HFLM(LM):
    """A transformers causal LM with a `DynamicCache`.

    Cropping passes a negative number (the tokens to remove): recent transformers accept
    only that, older ones read a positive number as the length to keep and a negative one
    as tokens to remove, so the call means the same everywhere.
    """

    def __init__(self, model: Any, tokenizer: Any, stop_tokens: Sequence[int] | None = None):
        super().__init__(model, tokenizer, stop_tokens)
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"  # renamed in 5.x

    def new_cache(self, max_len: int | None = None) -> Any:
        from transformers import DynamicCache

        return DynamicCache()

    def forward(self, ids: Tensor, cache: Any) -> Tensor:
        start = cache.get_seq_length()
        if start + ids.shape[1] > self.max_len:
            raise ValueError(
                f"sequence of {start + ids.shape[1]} positions exceeds the limit of {self.max_len}"
            )
        positions = torch.arange(start, start + ids.shape[1], device=ids.device)[None]  # (1, S)
        kwargs = {self._cache_arg: cache}
        return self.model(input_ids=ids, position_ids=positions, use_cache=True, **kwargs).logits

    def cache_len(self, cache: Any) -> int:
        return int(cache.get_seq_length())

    def crop(self, cache: Any, length: int) -> None:
        current = self.cache_len(cache)
        if not 0 <= length <= current:
            raise ValueError(f"crop length {length} outside [0, {current}]")
        if length < current:
            cache.crop(length - current)  # negative: the number of tokens to remove

    @property
    def max_len(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 1 << 30))


def as_lm(model: Any, tokenizer: Any = None, stop_tokens: Sequence[int] | None = None) -> LM:
    """Wrap a model for WiM.

    Args:
        model: an `LM` (returned as is), a `Pretrained` (core model + tokenizer, e.g.
            `load_smollm2()`), a core `Transformer`, or a transformers causal LM.
        tokenizer: HF-style tokenizer; taken from a `Pretrained` when not given.
        stop_tokens: ids that end a turn (default: eos and `<|im_end|>` where known).
    Raises:
        TypeError: the model is none of these.
    """
    from minirepro.core.model import Transformer
    from minirepro.core.pretrained import Pretrained

    if isinstance(model, LM):
        return model
    if isinstance(model, Pretrained):
        return CoreLM(model.model, tokenizer or model.tokenizer, stop_tokens or model.stop_tokens)
    if tokenizer is None:
        raise TypeError("a tokenizer is needed with a bare model")
    if isinstance(model, Transformer):
        return CoreLM(model, tokenizer, stop_tokens)
    if hasattr(model, "config") and hasattr(model, "forward") and hasattr(model, "generate"):
        return HFLM(model, tokenizer, stop_tokens)
    raise TypeError(
        f"expected a core Transformer, a Pretrained or a transformers causal LM, "
        f"got {type(model).__name__}"
    )


@torch.inference_mode()
def prefill(lm: LM, cache: Any, ids: Sequence[int], chunk: int = 512) -> Tensor:
    """Feed `ids` into `cache` in chunks of at most `chunk` tokens (chunked prefill).

    Returns:
        the last position's logits, (V,).
    """
    if not ids:
        raise ValueError("nothing to prefill")
    if chunk < 1:
        raise ValueError(f"prefill chunk must be >= 1, got {chunk}")
    x = torch.tensor([list(ids)], dtype=torch.long, device=lm.device)  # (1, S)
    for start in range(0, x.shape[1], chunk):
        logits = lm.forward(x[:, start : start + chunk], cache)
    return logits[0, -1]


@torch.inference_mode()
def generate_text(lm: LM, cache: Any, logits: Tensor, max_new_tokens: int) -> tuple[str, list[int]]:
    """Greedy tokens continuing the cache from last-position `logits` (V,) until a stop token.

    The cache grows by the tokens fed back (all but the last); crop it to undo that.
    Returns:
        (text, ids) without the stop token.
    """
    params = SamplingParams(max_new_tokens=max_new_tokens, stop_tokens=lm.stop_tokens)
    device = logits.device

    def step(token: Tensor) -> Tensor:  # token (1,) -> next logits (1, V)
        return lm.forward(token[:, None].to(device), cache)[:, -1]

    ids = []
    for token in decode_from(step, logits[None], params):
        t = int(token[0])
        if t in params.stop_tokens:
            break
        ids.append(t)
    return lm.decode(ids), ids


def chat_frame(tokenizer: Any, system: str | None) -> tuple[str, str]:
    """The chat template's text before and after one user message.

    Renders [system, user=<sentinel>] with the generation prompt and cuts at the sentinel,
    so any tokenizer's template works; a tokenizer without one gets plain role lines.
    Returns:
        (prefix up to the user's text, suffix from the end of the user's text to where the
        assistant's reply starts).
    """
    sentinel = "\x00USER\x00"
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": sentinel}
    ]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        before, sep, after = text.partition(sentinel)
        if sep:
            return before, after
    head = f"system: {system}\n" if system else ""
    return head + "user: ", "\nassistant:"
