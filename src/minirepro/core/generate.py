"""Sampling from a decoder with a KV cache: greedy, temperature, top-k, top-p, stop tokens.

Any model with `forward(idx (B, S), cache) -> logits (B, S, V)` and `new_cache(B, max_len)`
works (the core `Transformer` and everything plugged into it); `decode_from` continues a
cache the caller owns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is drawn.

    temperature 0 means greedy (argmax); top_k 0/None and top_p 1.0 disable those filters.
    Generation stops at max_new_tokens or after a token in stop_tokens (not returned).
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float = 1.0
    stop_tokens: tuple[int, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        object.__setattr__(self, "stop_tokens", tuple(int(t) for t in self.stop_tokens))


def filter_logits(logits: Tensor, top_k: int | None, top_p: float) -> Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf.

    Args:
        logits: (B, V) float scores, already divided by the temperature.
    Returns:
        (B, V) logits; at least one token per row stays finite.
    """
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already reach top_p.
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: Tensor, params: SamplingParams, generator: torch.Generator | None
) -> Tensor:
    """Next token ids (B,) from last-position logits (B, V)."""
    if params.temperature == 0.0:
        return logits.argmax(-1)
    logits = filter_logits(logits.float() / params.temperature, params.top_k, params.top_p)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _as_batch(prompt: Tensor | Sequence[int] | Sequence[Sequence[int]], device) -> Tensor:
    if isinstance(prompt, Tensor):
        ids = prompt
    elif len(prompt) and isinstance(prompt[0], (list, tuple, Tensor)):
        lengths = {len(p) for p in prompt}
        if len(lengths) != 1:
            raise ValueError("prompts in one batch must have equal lengths (use generate_many)")
        ids = torch.tensor([list(p) for p in prompt])
    else:
        ids = torch.tensor([list(prompt)])
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"prompt must be non-empty token ids (B, S), got shape {tuple(ids.shape)}")
    return ids.long().to(device)


@torch.inference_mode()
def decode_from(
    step: Callable[[Tensor], Tensor],
    logits: Tensor,
    params: SamplingParams = SamplingParams(),
) -> Iterator[Tensor]:
    """Yield the next token of every sequence, (B,), continuing a prefilled decoder state.

    This is the one decoding loop: `stream` calls it, and so does code that keeps its own
    cache (e.g. an inference pattern that decodes, crops the cache and prefills more).

    Args:
        step: feeds tokens (B,) to the decoder and returns the next logits (B, V).
        logits: last-position logits of the prefilled prompt, (B, V).
        params: sampling parameters.
    A finished sequence (stop token seen) keeps yielding its stop token; iteration ends when
    every sequence has finished or max_new_tokens steps were taken.
    """
    B = logits.shape[0]
    device = logits.device
    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    stop = torch.tensor(params.stop_tokens, dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    prev = torch.zeros(B, dtype=torch.long, device=device)
    for i in range(params.max_new_tokens):
        token = sample_next(logits, params, generator)
        token = torch.where(finished, prev, token)  # a finished row repeats its stop token
        finished |= torch.isin(token, stop)
        yield token
        if bool(finished.all()) or i == params.max_new_tokens - 1:
            return
        prev = token
        logits = step(token)


@torch.inference_mode()
def stream(
    model,
    prompt: Tensor | Sequence[int] | Sequence[Sequence[int]],
    params: SamplingParams = SamplingParams(),
    *,
    use_cache: bool = True,
    document_ids: Tensor | None = None,
) -> Iterator[Tensor]:
    """Yield the next token of every sequence, (B,), one step at a time.

    A finished sequence (stop token seen) keeps yielding its stop token; iteration ends when
    every sequence has finished or max_new_tokens steps were taken. Without use_cache, every
    step recomputes the whole prefix (the oracle the cache is tested against).
    document_ids (B, S) marks the documents of the prompt rows (e.g. 0 on left padding, 1
    on the prompt: `minirepro.core.documents.left_pad_document_ids`); new tokens continue
    each row's last document. The model's forward must take ``document_ids``.
    """
    device = next(model.parameters()).device
    ids = _as_batch(prompt, device)
    B, S = ids.shape
    kw = {}
    if document_ids is not None:
        if tuple(document_ids.shape) != (B, S):
            raise ValueError(
                f"document_ids must have the prompt's shape {(B, S)}, "
                f"got {tuple(document_ids.shape)}"
            )
        kw = {"document_ids": document_ids.to(device)}
    cache = model.new_cache(B, S + params.max_new_tokens) if use_cache else None
    if params.max_new_tokens == 0:
        return

    def step(token: Tensor) -> Tensor:
        nonlocal ids
        if use_cache:
            return model(token[:, None], cache)[:, -1]
        ids = torch.cat([ids, token[:, None]], dim=1)
        if kw:  # the new token continues its row's last document
            docs = kw["document_ids"]
            kw["document_ids"] = torch.cat([docs, docs[:, -1:]], dim=1)
        return model(ids, **kw)[:, -1]

    yield from decode_from(step, model(ids, cache, **kw)[:, -1], params)


def generate(
    model,
    prompt: Tensor | Sequence[int] | Sequence[Sequence[int]],
    params: SamplingParams | None = None,
    *,
    use_cache: bool = True,
    on_token: Callable[[Tensor], None] | None = None,
    document_ids: Tensor | None = None,
    **kwargs,
) -> list[list[int]]:
    """New tokens for each prompt in a batch of equal-length prompts.

    Args:
        model: a decoder (see module docstring).
        prompt: token ids, (S,) or (B, S), a list, or a list of equal-length lists.
        params: sampling parameters; or pass their fields as keyword arguments.
        use_cache: decode incrementally with the KV cache (False recomputes every step).
        on_token: called with each step's tokens (B,), for streaming.
        document_ids: (B, S) documents of the prompt rows (see `stream`), e.g. to keep a
            left-padded batch from attending to its padding.
    Returns:
        For each prompt, the generated ids without the stop token.
    """
    if params is not None and kwargs:
        raise ValueError("pass either params or sampling keyword arguments, not both")
    params = params or SamplingParams(**kwargs)
    steps = []
    for token in stream(model, prompt, params, use_cache=use_cache, document_ids=document_ids):
        steps.append(token)
        if on_token is not None:
            on_token(token)
    if not steps:
        return [[] for _ in range(_as_batch(prompt, "cpu").shape[0])]
    out = []
    stop = set(params.stop_tokens)
    for row in torch.stack(steps, dim=1).tolist():  # (B, steps)
        cut = next((i for i, t in enumerate(row) if t in stop), len(row))
        out.append(row[:cut])
    return out


def generate_many(
    model, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None, **kwargs
) -> list[list[int]]:
    """Prompts of different lengths: batched by equal length, results in input order."""
    params = params or SamplingParams(**kwargs)
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    out: list[list[int]] = [[] for _ in prompts]
    for idxs in by_len.values():
        for i, toks in zip(idxs, generate(model, [prompts[i] for i in idxs], params)):
            out[i] = toks
    return out
