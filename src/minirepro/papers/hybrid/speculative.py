"""Greedy speculative decoding for hybrid (attention + Mamba) targets.

Each round: the draft proposes K tokens one at a time; the target scores the last verified
token and the K drafts in one forward pass; the longest prefix of drafts equal to the
target's greedy choices is accepted, plus the target's own next token. Rejected positions
are rolled back with `Cache.crop`: attention layers just move their length back, Mamba
layers (`MambaState`) restart from the state checkpointed before the round and advance it
over the accepted tokens only, from the inputs kept during the verification pass — no
per-token states are stored (the paper's Algorithm 2). The draft rolls back the same way.

Greedy acceptance makes the output token-identical to greedy decoding of the target alone
(tested for K in {1, 2, 4, 8} with rejections at every offset).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from minirepro.papers.hybrid.mamba import checkpoint_states

__all__ = ["SpeculativeStats", "int8_draft", "layer_skip_draft", "speculative_generate"]


@dataclass
class SpeculativeStats:
    """Counts of one speculative generation.

    Attributes:
        tokens: tokens generated.
        target_passes: target forward passes, the prefill included.
        draft_passes: draft forward passes, the prefill included.
        accepted: how many rounds accepted m drafts, indexed by m (0..K).
    """

    k: int
    tokens: int = 0
    target_passes: int = 0
    draft_passes: int = 0
    accepted: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.accepted = self.accepted or [0] * (self.k + 1)

    @property
    def passes_per_token(self) -> float:
        """Target passes per generated token (plain greedy decoding: 1.0)."""
        return self.target_passes / max(self.tokens, 1)

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafts / proposed drafts."""
        rounds = sum(self.accepted)
        return sum(m * n for m, n in enumerate(self.accepted)) / max(rounds * self.k, 1)


def _as_prompt(prompt: Tensor | Sequence[int], device) -> Tensor:
    ids = prompt if isinstance(prompt, Tensor) else torch.tensor(list(prompt))
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1 or ids.numel() == 0:
        raise ValueError(
            f"prompt must be a non-empty 1-d list of token ids, got shape {tuple(ids.shape)}"
        )
    return ids.long().to(device)[None]  # (1, S)


@torch.inference_mode()
def speculative_generate(
    target,
    draft,
    prompt: Tensor | Sequence[int],
    max_new_tokens: int,
    k: int = 4,
    stop_tokens: Sequence[int] = (),
) -> tuple[list[int], SpeculativeStats]:
    """Greedy decoding of `target` sped up by `draft` proposals (one sequence).

    Args:
        target, draft: decoders with `forward(idx (1, S), cache) -> logits (1, S, V)` and
            `new_cache(1, max_len)` (core Transformers, hybrids included), same vocabulary.
        prompt: token ids (S,).
        max_new_tokens: how many tokens to generate at most.
        k: drafted tokens per round (K >= 1).
        stop_tokens: generation ends after one of these (not returned), as in `generate`.
    Returns:
        The generated ids (equal to greedy decoding of the target) and the counts.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    vocab = [getattr(getattr(m, "cfg", None), "vocab_size", None) for m in (target, draft)]
    if None not in vocab and vocab[0] != vocab[1]:
        raise ValueError(f"target and draft vocabularies differ: {vocab[0]} vs {vocab[1]} tokens")
    device = next(target.parameters()).device
    ids = _as_prompt(prompt, device)
    stats = SpeculativeStats(k)
    if max_new_tokens == 0:
        return [], stats
    stop = set(int(t) for t in stop_tokens)
    max_len = ids.shape[1] + max_new_tokens + k + 1
    t_cache, d_cache = target.new_cache(1, max_len), draft.new_cache(1, max_len)
    y = int(target(ids, t_cache)[0, -1].argmax())
    draft(ids, d_cache)
    stats.target_passes, stats.draft_passes = 1, 1
    out = [y]
    d_feed = [y]  # tokens the draft has not seen yet
    while len(out) < max_new_tokens and out[-1] not in stop:
        checkpoint_states(t_cache)
        checkpoint_states(d_cache)
        base = t_cache.pos
        drafts: list[int] = []
        logits = draft(torch.tensor([d_feed], device=device), d_cache)[0, -1]
        stats.draft_passes += 1
        for j in range(k):
            drafts.append(int(logits.argmax()))
            if j < k - 1:
                logits = draft(torch.tensor([[drafts[-1]]], device=device), d_cache)[0, -1]
                stats.draft_passes += 1
        block = torch.tensor([[y, *drafts]], device=device)  # (1, K+1)
        choice = target(block, t_cache)[0].argmax(-1).tolist()  # target's token after each
        stats.target_passes += 1
        m = 0
        while m < k and drafts[m] == choice[m]:
            m += 1
        stats.accepted[m] += 1
        t_cache.crop(base + 1 + m)  # y and the m accepted drafts
        d_cache.crop(min(base + 1 + m, d_cache.pos))
        y = choice[m]
        d_feed = [drafts[-1], y] if m == k else [y]  # the draft never fed its last draft
        for token in [*drafts[:m], y]:
            out.append(token)
            if token in stop or len(out) == max_new_tokens:
                break
    if out[-1] in stop:
        out.pop()
    stats.tokens = len(out)
    return out, stats


def layer_skip_draft(model, layers: Sequence[int]):
    """A draft that runs only `layers` of `model` (in order), with its embedding, final norm
    and head: self-speculation without a second set of weights (the layers are shared).

    Args:
        model: a core Transformer.
        layers: increasing layer indices, fewer than the model has (e.g. the first 4 and the
            last 4: skipping the middle keeps the layers that map to the vocabulary).
    """
    from dataclasses import replace

    from torch import nn

    from minirepro.core.model import Transformer

    cfg = model.cfg
    layers = list(layers)
    if not layers or layers != sorted(set(layers)) or layers[0] < 0 or layers[-1] >= cfg.n_layer:
        raise ValueError(f"layers must be increasing indices in [0, {cfg.n_layer}), got {layers}")
    if len(layers) == cfg.n_layer:
        raise ValueError("a draft must skip at least one layer")
    mixer = tuple(cfg.mixer_of(i) for i in layers)
    with torch.device("meta"):
        draft = Transformer(replace(cfg, n_layer=len(layers), mixer=mixer))
    draft.embed, draft.norm, draft.lm_head = model.embed, model.norm, model.lm_head
    draft.layers = nn.ModuleList(model.layers[i] for i in layers)
    return draft.eval()


def int8_draft(model):
    """A copy of `model` whose attention and MLP linear maps hold int8 weights (torch's
    dynamic quantisation): a draft with about a quarter of the target's weight bytes in
    those layers, for a memory-bound CPU decode.

    Mamba mixers stay float: int8 projections feeding dt, B and C (through exponentials)
    lowered the draft's acceptance. The embedding and head stay float too.

    Args:
        model: a core Transformer (hybrids included).
    """
    import copy
    import warnings

    from torch import nn

    from minirepro.core.model import Attention

    draft = copy.deepcopy(model).float().eval()
    quantize = torch.ao.quantization.quantize_dynamic
    with warnings.catch_warnings():  # torch.ao's dynamic quantisation warns of its migration
        warnings.simplefilter("ignore")
        for block in draft.layers:
            block.mlp = quantize(block.mlp, {nn.Linear}, dtype=torch.qint8)
            if isinstance(block.mixer, Attention):
                block.mixer = quantize(block.mixer, {nn.Linear}, dtype=torch.qint8)
    return draft
