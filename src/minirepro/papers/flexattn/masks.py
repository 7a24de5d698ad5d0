"""mask_mod / score_mod combinators and the library of attention variants.

A `mask_mod(b, h, q_idx, kv_idx) -> bool` says whether query `q_idx` may attend to key
`kv_idx` in batch `b`, head `h`; a `score_mod(score, b, h, q_idx, kv_idx) -> score` rewrites
one pre-softmax score. Both are functions of scalar indices, vectorised with `torch.vmap`
as torch does (`mods.py`); the variants here are also correct on broadcast index tensors
and say so (`mark_broadcastable`), which lets them skip vmap. Factories are named
`make_<variant>` and set `__name__` so tables and plots label themselves (attention-gym's habit).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from minirepro.papers.flexattn.mods import is_broadcastable, mark_broadcastable

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]

__all__ = [
    "MaskMod",
    "ScoreMod",
    "and_masks",
    "make_alibi",
    "make_causal",
    "make_document",
    "make_prefix_lm",
    "make_sliding_window",
    "make_softcap",
    "noop_mask",
    "offset_mask",
    "offset_score",
    "or_masks",
    "parse_variant",
]


@mark_broadcastable
def noop_mask(batch: Tensor, head: Tensor, token_q: Tensor, token_kv: Tensor) -> Tensor:
    """Every query sees every key (the reference's `noop_mask`)."""
    return batch.new_ones(size=(), dtype=torch.bool, device=batch.device)


def _named(fn, name: str, broadcastable: bool = True):
    fn.__name__ = fn.__qualname__ = name
    return mark_broadcastable(fn) if broadcastable else fn


def _all_broadcastable(mods) -> bool:
    return all(is_broadcastable(m) for m in mods)


def or_masks(*mask_mods: MaskMod) -> MaskMod:
    """The union of `mask_mods` (True where any is True)."""
    if not all(callable(m) for m in mask_mods):
        raise RuntimeError(f"All inputs should be callable mask_mods: {mask_mods}")

    def or_mask(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        result = b.new_zeros((), dtype=torch.bool)
        for mask in mask_mods:
            result = result | mask(b, h, q_idx, kv_idx)
        return result

    return _named(or_mask, "or_mask", _all_broadcastable(mask_mods))


def and_masks(*mask_mods: MaskMod) -> MaskMod:
    """The intersection of `mask_mods` (True where all are True)."""
    if not all(callable(m) for m in mask_mods):
        raise RuntimeError(f"All inputs should be callable mask_mods: {mask_mods}")

    def and_mask(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        result = b.new_ones((), dtype=torch.bool)
        for mask in mask_mods:
            result = result & mask(b, h, q_idx, kv_idx)
        return result

    return _named(and_mask, "and_mask", _all_broadcastable(mask_mods))


def offset_mask(mask_mod: MaskMod, q_offset: int) -> MaskMod:
    """`mask_mod` for queries that start at position `q_offset` (decoding with a KV cache)."""
    if q_offset == 0:
        return mask_mod

    def shifted(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return mask_mod(b, h, q_idx + q_offset, kv_idx)

    name = f"{getattr(mask_mod, '__name__', 'mask')}_from_{q_offset}"
    return _named(shifted, name, is_broadcastable(mask_mod))


def offset_score(score_mod: ScoreMod | None, q_offset: int) -> ScoreMod | None:
    """`score_mod` for queries that start at position `q_offset`."""
    if score_mod is None or q_offset == 0:
        return score_mod

    def shifted_score(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor):
        return score_mod(score, b, h, q_idx + q_offset, kv_idx)

    name = f"{getattr(score_mod, '__name__', 'score')}_from_{q_offset}"
    return _named(shifted_score, name, is_broadcastable(score_mod))


# --------------------------------------------------------------------------- masks


def make_causal() -> MaskMod:
    """Query i sees keys 0..i."""

    def causal(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return q_idx >= kv_idx

    return _named(causal, "causal")


def make_sliding_window(window: int) -> MaskMod:
    """Causal attention to the last `window` keys and the query's own: 0 <= q - kv <= window.

    attention-gym's `generate_sliding_window` uses the same `<=`.
    """
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")

    def sliding_window(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        d = q_idx - kv_idx
        return (d >= 0) & (d <= window)

    return _named(sliding_window, f"sliding_window_{window}")


def make_prefix_lm(prefix_len: int) -> MaskMod:
    """Bidirectional over the first `prefix_len` tokens, causal after them."""

    def prefix_lm(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return (kv_idx < prefix_len) | (q_idx >= kv_idx)

    return _named(prefix_lm, f"prefix_lm_{prefix_len}")


def make_document(offsets: Sequence[int] | Tensor, causal: bool = True) -> MaskMod:
    """Packed sequences: attend only within one's own document (causally by default).

    Args:
        offsets: Document boundaries [0, end_0, end_1, ..., total], as attention-gym's
            `generate_doc_mask_mod` takes them (cumulative lengths).
        causal: Also require q >= kv.
    """
    offsets = torch.as_tensor(offsets, dtype=torch.long)
    if offsets.ndim != 1 or offsets.numel() < 2 or offsets[0] != 0:
        raise ValueError("offsets must be 1-D, start at 0 and list every document's end")
    lengths = offsets.diff()
    if (lengths < 0).any():
        raise ValueError("offsets must be non-decreasing")
    doc_id = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)  # (total,)

    def document(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        ids = doc_id.to(q_idx.device)
        same = ids[q_idx] == ids[kv_idx]
        return same & (q_idx >= kv_idx) if causal else same

    kind = "document" if causal else "document_bidir"
    return _named(document, f"{kind}_{lengths.numel()}docs")


# --------------------------------------------------------------------------- score mods


def alibi_slopes(n_head: int) -> Tensor:
    """ALiBi's geometric head slopes 2^(-8 (h+1) / n_head) (Press et al., power-of-2 case)."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / n_head) for h in range(n_head)])


def make_alibi(n_head: int) -> ScoreMod:
    """score + slope[h] * (kv - q): a linear distance penalty per head."""
    slopes = alibi_slopes(n_head)

    def alibi(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return score + slopes.to(score.device, score.dtype)[h] * (kv_idx - q_idx)

    return _named(alibi, f"alibi_{n_head}")


def make_softcap(cap: float) -> ScoreMod:
    """cap * tanh(score / cap): Gemma-2 / Grok's logit soft-capping."""
    if not cap > 0:
        raise ValueError(f"cap must be positive, got {cap}")

    def softcap(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return cap * torch.tanh(score / cap)

    return _named(softcap, f"softcap_{cap:g}")


def compose_score_mods(*mods: ScoreMod) -> ScoreMod | None:
    """Apply score_mods left to right; None for none."""
    if not mods:
        return None
    if len(mods) == 1:
        return mods[0]

    def composed(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        for mod in mods:
            score = mod(score, b, h, q_idx, kv_idx)
        return score

    return _named(composed, "+".join(m.__name__ for m in mods), _all_broadcastable(mods))


# --------------------------------------------------------------------------- names

_MASKS: dict[str, Callable[..., MaskMod]] = {
    r"causal": lambda: make_causal(),
    r"full|noop": lambda: noop_mask,
    r"sliding_window_(\d+)": lambda w: make_sliding_window(int(w)),
    r"prefix_lm_(\d+)": lambda n: make_prefix_lm(int(n)),
}
_SCORE_MODS: dict[str, Callable[..., ScoreMod]] = {
    r"softcap_(\d+(?:\.\d+)?)": lambda c: make_softcap(float(c)),
}
VARIANT_NAMES = (
    "causal",
    "full",
    "sliding_window_<w>",
    "prefix_lm_<n>",
    "document_<len> (causal, packed documents of <len> tokens)",
    "alibi",
    "softcap_<cap>",
)


def _document_of_length(doc_len: int) -> MaskMod:
    """Causal attention within consecutive documents of `doc_len` tokens (any length)."""

    def document(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return (q_idx // doc_len == kv_idx // doc_len) & (q_idx >= kv_idx)

    return _named(document, f"document_{doc_len}")


def parse_variant(name: str, n_head: int | None = None) -> tuple[MaskMod, ScoreMod | None]:
    """Turns a name such as "sliding_window_64" or "prefix_lm_32+softcap_30" into mods.

    Parts joined by "+" are and-ed (masks) or applied in order (score mods: "alibi",
    "softcap_<cap>").

    Args:
        name: The variant name (`ModelConfig.mask`).
        n_head: Number of query heads, needed by "alibi".

    Returns:
        (mask_mod, score_mod or None).

    Raises:
        ValueError: An unknown part; the message lists the known names.
    """
    masks: list[MaskMod] = []
    mods: list[ScoreMod] = []
    for part in name.split("+"):
        part = part.strip()
        if m := re.fullmatch(r"document_(\d+)", part):
            masks.append(_document_of_length(int(m.group(1))))
            continue
        if part == "alibi":
            if n_head is None:
                raise ValueError("the 'alibi' variant needs n_head")
            mods.append(make_alibi(n_head))
            continue
        for pattern, factory in _MASKS.items():
            if m := re.fullmatch(pattern, part):
                masks.append(factory(*m.groups()))
                break
        else:
            for pattern, factory in _SCORE_MODS.items():
                if m := re.fullmatch(pattern, part):
                    mods.append(factory(*m.groups()))
                    break
            else:
                raise ValueError(
                    f"unknown attention variant {part!r} in {name!r}; known: "
                    f"{', '.join(VARIANT_NAMES)} (join several with '+')"
                )
    if not masks:
        mask = noop_mask
    elif len(masks) == 1:
        mask = masks[0]
    else:
        mask = and_masks(*masks)
        mask = _named(mask, "+".join(m.__name__ for m in masks), is_broadcastable(mask))
    return mask, compose_score_mods(*mods)


def is_noop(mask_mod: MaskMod) -> bool:
    return mask_mod is noop_mask
