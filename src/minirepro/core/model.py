"""A small Llama-style decoder: RMSNorm, RoPE, SwiGLU, grouped-query attention, KV cache.

Three things are pluggable, by name, so papers can swap them without touching this file:

- the *attention function* used by the attention mixer (`register_attention`): SDPA by
  default, an explicit-softmax `eager` reference, FlexAttention once `minirepro.papers.flexattn`
  registers it;
- the *token mixer* of each layer (`register_mixer`): attention by default; a recurrent mixer
  (rnn) or a state-space mixer (hybrid) registers its own. `ModelConfig.mixer` may name one
  mixer for all layers or one per layer;
- the *input embedding* (`register_embedding`): a learned table by default; the search paper
  registers the one-hot token-and-position embedding of its reference.

Weights convert to and from HF `LlamaForCausalLM` (`minirepro.core.hf_llama`: `to_hf`,
`from_hf`), so the forward pass is tested against transformers' and the real SmolLM2 loads
into it.

Rows packed with several documents take `document_ids` (`minirepro.core.documents`):
positions restart at each document and attention stays inside it (a block-diagonal causal
mask), so a packed row computes what each document would compute alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minirepro.core.documents import check_document_ids, document_layout


@dataclass
class ModelConfig:
    """Shape and pluggable parts of the decoder.

    `d_ff=None` gives Llama's SwiGLU width: 8/3 · d_model rounded up to a multiple of 32.
    `head_dim=None` gives d_model // n_head. `n_kv_head=None` means no grouping (MHA).
    `mixer` is a registered token-mixer name, or a tuple of names, one per layer.
    `attention` is a registered attention-function name; `mask` names the mask it applies
    ("causal" everywhere; other names, e.g. "sliding_window_64", where the function knows them).
    `embedding` is a registered input-embedding name ("learned": `nn.Embedding`).
    """

    vocab_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None
    d_model: int = 128
    head_dim: int | None = None
    d_ff: int | None = None
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    mixer: str | tuple[str, ...] = "attention"
    attention: str = "sdpa"
    mask: str = "causal"
    mixer_kwargs: dict[str, Any] = field(default_factory=dict)
    init_std: float = 0.02
    embedding: str = "learned"

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            if self.d_model % self.n_head:
                raise ValueError(
                    f"d_model={self.d_model} is not divisible by n_head={self.n_head}; "
                    "set head_dim explicitly"
                )
            self.head_dim = self.d_model // self.n_head
        if self.d_ff is None:
            self.d_ff = 32 * math.ceil(8 * self.d_model / 3 / 32)
        if self.n_head % self.n_kv_head:
            raise ValueError(
                f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        if isinstance(self.mixer, list):
            self.mixer = tuple(self.mixer)
        if isinstance(self.mixer, tuple) and len(self.mixer) != self.n_layer:
            raise ValueError(
                f"mixer lists {len(self.mixer)} names for n_layer={self.n_layer} layers"
            )
        for name, value in [
            ("vocab_size", self.vocab_size),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("d_model", self.d_model),
            ("max_seq_len", self.max_seq_len),
        ]:
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")

    def mixer_of(self, layer: int) -> str:
        return self.mixer[layer] if isinstance(self.mixer, tuple) else self.mixer

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(d["mixer"], tuple):
            d["mixer"] = list(d["mixer"])
        return d


# --------------------------------------------------------------------------- attention


class AttentionFn(Protocol):
    def __call__(self, q: Tensor, k: Tensor, v: Tensor, *, q_start: int) -> Tensor:
        """q: (B, H, S, D); k, v: (B, H_kv, T, D) with T = q_start + S. Returns (B, H, S, D).

        Query i sits at position q_start + i; keys sit at positions 0..T-1.

        A function that also takes ``mask=`` (a boolean (B, 1, S, T), True where query i may
        attend to key j, causality included) and sets ``fn.takes_mask = True`` serves rows
        of packed documents; the model passes ``mask`` only to such functions.
        """
        ...


AttentionFactory = Callable[[ModelConfig], AttentionFn]
_ATTENTION: dict[str, AttentionFactory] = {}


def register_attention(name: str, factory: AttentionFactory) -> None:
    """Register `factory(cfg) -> attention_fn` under `name` (see `AttentionFn`)."""
    _ATTENTION[name] = factory


def get_attention(cfg: ModelConfig) -> AttentionFn:
    if cfg.attention not in _ATTENTION:
        raise ValueError(
            f"unknown attention {cfg.attention!r}; registered: {sorted(_ATTENTION)}. "
            "A paper's attention is registered when its package is imported "
            "(e.g. `import minirepro.papers.flexattn` for 'flex')."
        )
    return _ATTENTION[cfg.attention](cfg)


def causal_mask(q_start: int, S: int, T: int, device: torch.device | None = None) -> Tensor:
    """Boolean (S, T) mask, True where query q_start+i may attend to key j (j <= q_start+i)."""
    q_pos = torch.arange(q_start, q_start + S, device=device)[:, None]
    return torch.arange(T, device=device)[None, :] <= q_pos


def _require_causal(cfg: ModelConfig) -> None:
    if cfg.mask != "causal":
        raise ValueError(
            f"attention {cfg.attention!r} supports mask='causal' only, got {cfg.mask!r}; "
            "use attention='flex' (minirepro.papers.flexattn) for other masks"
        )


def _sdpa_factory(cfg: ModelConfig) -> AttentionFn:
    _require_causal(cfg)

    def sdpa(
        q: Tensor, k: Tensor, v: Tensor, *, q_start: int, mask: Tensor | None = None
    ) -> Tensor:
        S, T = q.shape[2], k.shape[2]
        gqa = q.shape[1] != k.shape[1]
        if mask is not None:  # (B, 1, S, T): documents, causality included
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        if q_start == 0 and S == T:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        if S == 1:  # one decoding step sees every cached key
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        mask = causal_mask(q_start, S, T, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)

    sdpa.takes_mask = True
    return sdpa


def _eager_factory(cfg: ModelConfig) -> AttentionFn:
    _require_causal(cfg)

    def eager(
        q: Tensor, k: Tensor, v: Tensor, *, q_start: int, mask: Tensor | None = None
    ) -> Tensor:
        group = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(group, dim=1)  # (B, H, T, D)
        v = v.repeat_interleave(group, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, S, T)
        if mask is None:
            mask = causal_mask(q_start, q.shape[2], k.shape[2], q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(-1) @ v

    eager.takes_mask = True
    return eager


register_attention("sdpa", _sdpa_factory)
register_attention("eager", _eager_factory)


# --------------------------------------------------------------------------- layers


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in fp32 whatever the input dtype, as Llama does.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(
    positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """cos, sin of shape (*positions.shape, head_dim) in the rotate-half layout of HF Llama."""
    inv_freq = 1.0 / theta ** (
        torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim
    )
    freqs = positions.float()[..., None] * inv_freq  # (..., head_dim/2)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (B, H, S, D); cos, sin: (S, D) or (B, 1, S, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.w_gate = nn.Linear(d_model, d_ff, bias=False)
        self.w_up = nn.Linear(d_model, d_ff, bias=False)
        self.w_down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


@dataclass
class MixerInput:
    """What a token mixer receives besides x: positions and its cache slot.

    cos, sin: RoPE tables for the S new positions, (S, head_dim), or (B, 1, S, head_dim)
    when rows hold several documents (positions restart per document).
    start_pos: index of the first new token in the row. cache: this layer's state or None.
    mask: None (one causal sequence per row) or the (B, 1, S, T) document mask of
    `minirepro.core.documents`; a mixer that handles it sets ``takes_documents = True``.
    """

    cos: Tensor
    sin: Tensor
    start_pos: int
    cache: Any = None
    mask: Tensor | None = None


class KVCache:
    """Preallocated keys and values of one attention layer: (B, H_kv, max_len, D) each."""

    def __init__(
        self,
        batch_size: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def update(self, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, H_kv, S, D) at [start, start+S); return all keys/values so far."""
        end = start + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[2]} positions, asked for {end}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index` (beam search, dropping finished sequences)."""
        self.k, self.v = self.k[index], self.v[index]


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE; the attention function is pluggable."""

    takes_documents = True  # honours MixerInput.mask (if its attention function takes masks)

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)
        self.attn_fn = get_attention(cfg)
        self.attention = cfg.attention

    def new_cache(self, batch_size: int, max_len: int, device, dtype) -> KVCache:
        return KVCache(batch_size, self.n_kv_head, max_len, self.head_dim, device, dtype)

    def forward(self, x: Tensor, inp: MixerInput) -> Tensor:
        B, S, _ = x.shape
        q = self.wq(x).view(B, S, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, S, D)
        k = self.wk(x).view(B, S, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, S, D)
        v = self.wv(x).view(B, S, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, inp.cos, inp.sin), apply_rope(k, inp.cos, inp.sin)
        if inp.cache is not None:
            k, v = inp.cache.update(inp.start_pos, k, v)  # (B, Hkv, start+S, D)
        elif inp.start_pos != 0:
            raise ValueError("start_pos > 0 needs a cache holding the earlier keys")
        if inp.mask is None:
            y = self.attn_fn(q, k, v, q_start=inp.start_pos)  # (B, H, S, D)
        elif getattr(self.attn_fn, "takes_mask", False):
            y = self.attn_fn(q, k, v, q_start=inp.start_pos, mask=inp.mask)
        else:
            raise ValueError(
                f"attention {self.attention!r} takes no document mask; use attention='sdpa' "
                "or 'eager' for rows with document_ids"
            )
        return self.wo(y.transpose(1, 2).reshape(B, S, self.n_head * self.head_dim))


EmbeddingFactory = Callable[[ModelConfig], nn.Module]
_EMBEDDINGS: dict[str, EmbeddingFactory] = {
    "learned": lambda cfg: nn.Embedding(cfg.vocab_size, cfg.d_model)
}


def register_embedding(name: str, factory: EmbeddingFactory) -> None:
    """Register an input embedding: `factory(cfg) -> nn.Module`.

    The module maps token ids (B, S) to (B, S, d_model); if it sets
    ``takes_positions = True`` it is called as ``module(idx, positions)`` with the positions
    (S,) or (B, S) of the tokens. Tied output weights (`tie_embeddings`) need a ``weight``
    parameter of shape (vocab_size, d_model).
    """
    _EMBEDDINGS[name] = factory


def make_embedding(cfg: ModelConfig) -> nn.Module:
    if cfg.embedding not in _EMBEDDINGS:
        raise ValueError(
            f"unknown embedding {cfg.embedding!r}; registered: {sorted(_EMBEDDINGS)}. "
            "A paper's embedding is registered when its package is imported "
            "(e.g. `import minirepro.papers.search` for 'onehot')."
        )
    module = _EMBEDDINGS[cfg.embedding](cfg)
    if cfg.tie_embeddings:
        w = getattr(module, "weight", None)
        if not isinstance(w, nn.Parameter) or tuple(w.shape) != (cfg.vocab_size, cfg.d_model):
            raise ValueError(
                f"embedding {cfg.embedding!r} has no (vocab_size, d_model) weight to tie the "
                "output layer to; set tie_embeddings=False"
            )
    return module


MixerFactory = Callable[[ModelConfig, int], nn.Module]
_MIXERS: dict[str, MixerFactory] = {"attention": Attention}


def register_mixer(name: str, factory: MixerFactory) -> None:
    """Register a token mixer: `factory(cfg, layer) -> nn.Module`.

    The module's `forward(x (B, S, d_model), inp: MixerInput) -> (B, S, d_model)` mixes
    along the sequence, causally; `new_cache(batch_size, max_len, device, dtype)` returns its
    per-layer state for incremental decoding (carried in `inp.cache`).
    """
    _MIXERS[name] = factory


def make_mixer(cfg: ModelConfig, layer: int) -> nn.Module:
    name = cfg.mixer_of(layer)
    if name not in _MIXERS:
        raise ValueError(
            f"unknown token mixer {name!r} for layer {layer}; registered: {sorted(_MIXERS)}"
        )
    return _MIXERS[name](cfg, layer)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = make_mixer(cfg, layer)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.d_ff)

    def forward(self, x: Tensor, inp: MixerInput) -> Tensor:
        x = x + self.mixer(self.norm1(x), inp)
        return x + self.mlp(self.norm2(x))


class Cache:
    """Per-layer decoding state of a whole model, and how many positions it holds.

    `doc_ids` (B, max_len) holds the document ids of the cached tokens once a forward pass
    gave `document_ids` (None before: one document per row).
    """

    def __init__(self, layers: list[Any], max_len: int) -> None:
        self.layers = layers
        self.max_len = max_len
        self.pos = 0
        self.doc_ids: Tensor | None = None

    def reorder(self, index: Tensor) -> None:
        for c in self.layers:
            c.reorder(index)
        if self.doc_ids is not None:
            self.doc_ids = self.doc_ids[index]

    def crop(self, length: int) -> None:
        """Forget positions >= length (speculative decoding rejects drafted tokens).

        Attention caches only need the position moved back; stateful mixers must
        implement `crop(length)` themselves.
        """
        if not 0 <= length <= self.pos:
            raise ValueError(f"crop length {length} outside [0, {self.pos}]")
        for c in self.layers:
            if hasattr(c, "crop"):
                c.crop(length)
            elif not isinstance(c, KVCache):
                raise TypeError(f"{type(c).__name__} cannot be cropped")
        self.pos = length


class Transformer(nn.Module):
    """Decoder-only language model.

    Example:
        >>> model = Transformer(ModelConfig(vocab_size=100, n_layer=2, d_model=64, n_head=4))
        >>> logits = model(torch.randint(0, 100, (2, 10)))  # (2, 10, 100)
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = make_embedding(cfg)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; residual output projections scaled by 1/sqrt(2·n_layer)
        (GPT-2's rule, so the residual stream's variance does not grow with depth).

        A plugged-in module with its own scheme (a state-space mixer's decay rates and conv)
        defines `init_mixer_weights()`, called after the generic init."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.ndim < 2:  # norm gains (and any bias a plugged-in mixer adds) keep their init
                continue
            residual_out = name.endswith(("wo.weight", "w_down.weight"))
            nn.init.normal_(
                p, mean=0.0, std=std / math.sqrt(2 * self.cfg.n_layer) if residual_out else std
            )
        for module in self.modules():
            if hasattr(module, "init_mixer_weights"):
                module.init_mixer_weights()

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # tied weights counted once
        return n - sum(p.numel() for p in self.embed.parameters()) if exclude_embeddings else n

    def new_cache(self, batch_size: int, max_len: int | None = None) -> Cache:
        """Empty decoding state for `batch_size` sequences of up to `max_len` positions."""
        max_len = max_len or self.cfg.max_seq_len
        p = self.lm_head.weight
        layers = [b.mixer.new_cache(batch_size, max_len, p.device, p.dtype) for b in self.layers]
        return Cache(layers, max_len)

    def forward(
        self,
        idx: Tensor | None,
        cache: Cache | None = None,
        *,
        document_ids: Tensor | None = None,
        return_hidden: bool = False,
        embeds: Tensor | None = None,
    ) -> Tensor:
        """Logits (B, S, vocab_size) for token ids idx (B, S).

        With a cache, idx continues the sequences the cache holds and the cache advances by S.
        With document_ids (B, S) integers, each row holds several documents (maximal runs of
        equal ids; padding is a document of its own): positions restart at each document and
        tokens attend only within their own, so every document's output equals the output
        of the document alone. With a cache that has seen ids, new tokens without ids
        continue the last document of their row.
        With return_hidden, returns the final normalised hidden states (B, S, d_model) instead.
        With embeds (B, S, d_model) and idx None, those vectors are the inputs instead of
        token embeddings (Coconut feeds hidden states back as inputs).
        """
        if embeds is not None:
            if idx is not None or embeds.ndim != 3 or embeds.shape[-1] != self.cfg.d_model:
                raise ValueError(
                    f"pass idx or embeds (batch, seq, {self.cfg.d_model}), not both; got "
                    f"embeds of shape {tuple(embeds.shape)}"
                )
            idx = embeds.new_zeros(embeds.shape[:2], dtype=torch.long)  # (B, S) placeholder
        if idx.ndim != 2:
            raise ValueError(f"idx must be (batch, seq) token ids, got shape {tuple(idx.shape)}")
        B, S = idx.shape
        start = cache.pos if cache is not None else 0
        if start + S > (cache.max_len if cache is not None else self.cfg.max_seq_len):
            limit = cache.max_len if cache is not None else self.cfg.max_seq_len
            raise ValueError(f"sequence of {start + S} positions exceeds the limit of {limit}")
        if S and (int(idx.min()) < 0 or int(idx.max()) >= self.cfg.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.cfg.vocab_size})")
        mask, positions = None, torch.arange(start, start + S, device=idx.device)
        if document_ids is not None or (cache is not None and cache.doc_ids is not None):
            layout = self._document_layout(idx, cache, document_ids)
            mask, positions = layout.mask, layout.positions  # (B, 1, S, T), (B, S)
        if embeds is not None:
            x = embeds  # (B, S, d_model)
        elif getattr(self.embed, "takes_positions", False):
            x = self.embed(idx, positions)  # (B, S, d_model)
        else:
            x = self.embed(idx)
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        if mask is not None:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, S, head_dim)
        for i, block in enumerate(self.layers):
            layer_cache = cache.layers[i] if cache is not None else None
            x = block(x, MixerInput(cos, sin, start, layer_cache, mask))
        if cache is not None:
            cache.pos = start + S
        x = self.norm(x)
        return x if return_hidden else self.lm_head(x)

    def _document_layout(self, idx: Tensor, cache: Cache | None, document_ids: Tensor | None):
        """Positions and mask of rows of packed documents; records the ids in the cache."""
        B, S = idx.shape
        start = cache.pos if cache is not None else 0
        for i, block in enumerate(self.layers):
            if not getattr(block.mixer, "takes_documents", False):
                raise ValueError(
                    f"layer {i}'s mixer {self.cfg.mixer_of(i)!r} cannot separate documents; "
                    "document_ids need attention layers"
                )
        if document_ids is None:  # continue each row's last cached document
            document_ids = cache.doc_ids[:, start - 1 : start].expand(B, S)
        check_document_ids(document_ids, (B, S))
        document_ids = document_ids.to(idx.device)
        if cache is None:
            return document_layout(document_ids, 0)
        if cache.doc_ids is None:
            if start > 0:
                raise ValueError(
                    "document_ids must be given from the first forward pass on a cache"
                )
            cache.doc_ids = torch.zeros(B, cache.max_len, dtype=torch.long, device=idx.device)
        cache.doc_ids[:, start : start + S] = document_ids
        return document_layout(cache.doc_ids[:, : start + S], start)
