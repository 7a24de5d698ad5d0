"""One forward pass of the core `Transformer` over a flat, ragged batch and a paged KV cache.

An iteration mixes sequences at different stages: some decode one token, some prefill a
chunk of their prompt, each at its own position. All their tokens go through the
projections and the MLP as one (N, d_model) matrix; only attention is per sequence:

- every decoding sequence attends straight from its blocks (`paged_decode_attention`: a C++
  kernel that reads each key and value once through the block table; without it, the
  blocks are gathered into padded groups of similar length and attended with masked SDPA,
  the G = H / H_kv query heads sharing a KV head riding along as G "query positions");
- a prefill chunk attends causally to its own keys (a fresh prompt, no gather) or to its
  cached prefix plus the chunk (gathered, with an offset causal mask).

New keys and values are written into their slots before attention reads them. Logits are
computed only for the rows that need a next token.

Layers with a recurrent token mixer (hybrid's "mamba" / "mamba2") hold no keys: each
sequence carries its own per-layer state (`ModelRunner.new_state`, made when the sequence
first runs), and such a layer runs each sequence's rows of the flat batch from that state,
one sequence after another, advancing it. Decoding rows (one token each) run as one batch
instead where the state class offers `stack` / `unstack` (hybrid's `MambaState`): their
states are concatenated, fed together and split back. These layers run in the model's own
dtype.

Under a low-precision engine dtype (`dtypes.py`: "bfloat16", "int8") the residual stream,
the norms and the rotary tables stay fp32; each GEMM's input is rounded to bf16, q/k/v and
the KV cache are bf16, and the logits come back in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from minirepro.core.model import MixerInput, Transformer, causal_mask, rope_cos_sin
from minirepro.papers.serve import gemm
from minirepro.papers.serve.dtypes import activation_dtype, check_dtype
from minirepro.papers.serve.kernels import kernel_available
from minirepro.papers.serve.kv_cache import PagedKVCache
from minirepro.papers.serve.paged_attention import BACKENDS, attend_paged, kernel_fits


@dataclass
class SeqWork:
    """What one sequence contributes to an iteration.

    Attributes:
        start: position of the first scheduled token (= tokens already in the cache).
        num_tokens: tokens scheduled now, at positions start .. start + num_tokens - 1.
        block_table: the sequence's blocks, covering at least start + num_tokens positions.
        sample: whether the last scheduled token's logits are wanted.
        state: the sequence's recurrent-layer states (`ModelRunner.new_state`), which this
            iteration advances; None for a model of attention layers only.
    """

    start: int
    num_tokens: int
    block_table: Sequence[int]
    sample: bool
    state: list[Any] | None = None


@dataclass
class Prefill:
    """A prefill chunk's rows in the flat batch and, with a cached prefix, its context slots."""

    begin: int
    end: int
    start: int
    ctx_slots: Tensor | None  # (start + S,) or None when start == 0


@dataclass
class DecodeGroup:
    """Decoding sequences attended to in one call (of similar length, without the kernel)."""

    rows: Tensor  # (Bd,) flat rows of the decoding tokens
    tables: Tensor  # (Bd, nb) block tables, padded with block 0
    lens: Tensor  # (Bd,) context lengths (the new token included)
    in_order: bool  # rows are 0..Bd-1 (the whole batch)


def bucket_lengths(
    lengths: Sequence[int], max_groups: int = 4, overhead: int = 1024
) -> list[list[int]]:
    """Indices of `lengths` grouped so that padded attention work is small.

    Minimises sum over groups of (size x longest) + overhead per extra group (the fixed
    cost of one more gather and attention call, in key-token units) by dynamic
    programming over the sorted lengths.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    ls = [lengths[i] for i in order]
    n = len(ls)
    INF = float("inf")
    # best[g][j]: least cost of the first j sorted lengths in g groups
    best = [[INF] * (n + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0.0
    for g in range(1, max_groups + 1):
        for j in range(1, n + 1):
            for i in range(g - 1, j):
                c = best[g - 1][i] + (j - i) * ls[j - 1] + overhead
                if c < best[g][j]:
                    best[g][j], cut[g][j] = c, i
    g = min(range(1, max_groups + 1), key=lambda g: best[g][n])
    groups, j = [], n
    while g > 0:
        i = cut[g][j]
        groups.append(order[i:j])
        j, g = i, g - 1
    return groups[::-1]


@dataclass
class BatchInput:
    """Tensors of one iteration (built by `ModelRunner.prepare`; input ids come later)."""

    num_tokens: int
    positions: Tensor  # (N,)
    slots: Tensor  # (N,) where each new token's K/V goes
    decodes: list[DecodeGroup] = field(default_factory=list)
    prefills: list[Prefill] = field(default_factory=list)
    logits_rows: Tensor | None = None  # (n_sample,)
    input_ids: Tensor | None = None  # (N,), set by `set_input_ids`
    # recurrent layers: (begin row, end row, start position, per-layer states) per sequence
    states: list[tuple[int, int, int, list[Any]]] = field(default_factory=list)
    # recurrent layers, with batched decode: the decoding rows (Bd,) and their sequences'
    # states, apart from `states` (which then holds the prefill chunks only)
    decode_rows: Tensor | None = None
    decode_states: list[list[Any]] = field(default_factory=list)
    decode_starts: list[int] = field(default_factory=list)


class ModelRunner:
    """Runs a core `Transformer`'s weights over `BatchInput`s and a `PagedKVCache`.

    The q/k/v projections and the gate/up projections are fused into one matrix each (two
    GEMMs fewer per layer); the model itself is not modified. Layers whose mixer is not
    attention (a hybrid's Mamba layers) run the model's own mixer module per sequence, from
    the states in `SeqWork.state` (see the module docstring).

    Args:
        attention: Decode attention backend: "kernel" (the C++ paged kernel), "torch"
            (gather + SDPA), or "auto" (the kernel where it builds and fits the cache).
        gemm: Projection GEMMs (`gemm.GEMMS`): "packed" (the C++ packed kernel for decode
            rows, oneDNN for prefill), "onednn", "torch" (`F.linear`), or "auto" (the best of
            those that run here). Weights are re-laid out once, here.
        dtype: The engine's resolved number format (`dtypes.DTYPES`); the cache must hold
            `dtypes.activation_dtype(dtype)`.
    """

    def __init__(
        self,
        model: Transformer,
        cache: PagedKVCache,
        attention: str = "auto",
        gemm_kind: str = "auto",
        dtype: str = "float32",
    ) -> None:
        cfg = model.cfg
        # layers whose mixer keeps a per-sequence recurrent state instead of keys and values
        self.recurrent = [cfg.mixer_of(i) != "attention" for i in range(cfg.n_layer)]
        for i, block in enumerate(model.layers):
            if self.recurrent[i] and not callable(getattr(block.mixer, "new_cache", None)):
                raise ValueError(
                    f"layer {i} uses mixer {cfg.mixer_of(i)!r}, which has no new_cache() "
                    "decoding state: the engine cannot run it"
                )
        self.stateful = any(self.recurrent)
        # decode rows of recurrent layers as one stacked batch (False: one call per sequence)
        self.batch_recurrent_decode = True
        if cfg.mask != "causal":
            raise ValueError(f"the engine supports mask='causal' only, got {cfg.mask!r}")
        self.model, self.cache, self.cfg = model, cache, cfg
        self.block_size = cache.block_size
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        w = model.embed.weight
        self.dtype, self.device = w.dtype, w.device
        # GEMM inputs, q/k/v and KV cache: the model's own dtype under "float32"
        self.act = w.dtype if check_dtype(dtype) == "float32" else activation_dtype(dtype)
        if cache.k[0].dtype != self.act:
            raise ValueError(f"dtype {dtype!r} needs a {self.act} KV cache, got {cache.k[0].dtype}")
        if attention not in BACKENDS:
            raise ValueError(f"attention must be one of {BACKENDS}, got {attention!r}")
        fits = kernel_fits(cache.k[0], cfg.head_dim)
        if attention == "kernel" and not fits:
            raise ValueError(
                "the paged attention kernel needs a float32 or bfloat16 CPU cache and "
                "head_dim % 8 == 0, "
                f"got {cache.k[0].dtype} on {cache.k[0].device}, head_dim {cfg.head_dim}"
            )
        self.use_kernel = attention == "kernel" or (
            attention == "auto" and fits and kernel_available()
        )
        # without the kernel, decode sequences of very different lengths attend in up to this
        # many padded groups; one more group must save this many padded key positions
        self.max_decode_groups = 1 if self.use_kernel else 4
        self.decode_group_overhead = 1024
        self.gemm = gemm.resolve_gemm(gemm_kind, w, dtype)
        pack = lambda t: gemm.pack(t, self.gemm, dtype)  # noqa: E731
        att = [b.mixer if not r else None for b, r in zip(model.layers, self.recurrent)]
        with torch.no_grad():
            self.w_qkv = [
                pack(torch.cat([a.wq.weight, a.wk.weight, a.wv.weight])) if a else None for a in att
            ]
            self.w_o = [pack(a.wo.weight) if a else None for a in att]
            self.w_gate_up = [
                pack(torch.cat([b.mlp.w_gate.weight, b.mlp.w_up.weight])) for b in model.layers
            ]
            self.w_down = [pack(b.mlp.w_down.weight) for b in model.layers]
            self.w_lm_head = pack(model.lm_head.weight)
        self.cos, self.sin = rope_cos_sin(
            torch.arange(cfg.max_seq_len, device=self.device),
            cfg.head_dim,
            cfg.rope_theta,
            self.dtype,
        )  # (max_seq_len, head_dim) each

    def new_state(self) -> list[Any] | None:
        """A new sequence's decoding state: one entry per layer, the mixer's own
        `new_cache(1, ...)` at recurrent layers and None at attention layers; None for a model
        of attention layers only (its KV cache is all it needs)."""
        if not self.stateful:
            return None
        return [
            b.mixer.new_cache(1, self.cfg.max_seq_len, self.device, self.dtype) if r else None
            for b, r in zip(self.model.layers, self.recurrent)
        ]

    # ------------------------------------------------------------------ metadata
    def _slots(self, table: Sequence[int], begin: int, end: int) -> list[int]:
        bs = self.block_size
        return [table[p // bs] * bs + p % bs for p in range(begin, end)]

    def prepare(self, work: Sequence[SeqWork]) -> BatchInput:
        """Positions, write slots, attention gathers and logit rows of one iteration."""
        bs = self.block_size
        positions: list[int] = []
        slots: list[int] = []
        decode_rows: list[int] = []
        decode_tables: list[Sequence[int]] = []
        decode_lens: list[int] = []
        prefills: list[Prefill] = []
        logits_rows: list[int] = []
        states: list[tuple[int, int, int, list[Any]]] = []
        decode_states: list[tuple[int, int, list[Any]]] = []
        row = 0
        for w in work:
            end = w.start + w.num_tokens
            if end > len(w.block_table) * bs:
                raise ValueError(f"block table of {len(w.block_table)} blocks cannot hold {end}")
            if self.stateful:
                if w.state is None:
                    raise ValueError("a model with recurrent layers needs each sequence's state")
                if w.num_tokens == 1 and w.start > 0 and self._stackable(w.state):
                    decode_states.append((row, w.start, w.state))
                else:
                    states.append((row, row + w.num_tokens, w.start, w.state))
            positions.extend(range(w.start, end))
            slots.extend(self._slots(w.block_table, w.start, end))
            if w.num_tokens == 1 and w.start > 0:
                decode_rows.append(row)
                decode_tables.append(w.block_table)
                decode_lens.append(end)
            else:
                ctx = None
                if w.start > 0:
                    ctx = torch.tensor(self._slots(w.block_table, 0, end), dtype=torch.long)
                prefills.append(Prefill(row, row + w.num_tokens, w.start, ctx))
            row += w.num_tokens
            if w.sample:
                logits_rows.append(row - 1)
        batch = BatchInput(
            num_tokens=row,
            positions=torch.tensor(positions, dtype=torch.long),
            slots=torch.tensor(slots, dtype=torch.long),
            prefills=prefills,
            logits_rows=torch.tensor(logits_rows, dtype=torch.long),
            states=states,
        )
        if len(decode_states) == 1:  # nothing to stack
            r, start, state = decode_states[0]
            batch.states.append((r, r + 1, start, state))
        elif decode_states:
            batch.decode_rows = torch.tensor([r for r, _, _ in decode_states], dtype=torch.long)
            batch.decode_states = [st for _, _, st in decode_states]
            batch.decode_starts = [start for _, start, _ in decode_states]
        groups = (
            bucket_lengths(decode_lens, self.max_decode_groups, self.decode_group_overhead)
            if decode_rows
            else []
        )
        for members in groups:
            lens_g = [decode_lens[i] for i in members]
            nb = -(-max(lens_g) // bs)
            tables = [list(decode_tables[i][:nb]) for i in members]
            rows = [decode_rows[i] for i in members]
            batch.decodes.append(
                DecodeGroup(
                    rows=torch.tensor(rows, dtype=torch.long),
                    tables=torch.tensor([t + [0] * (nb - len(t)) for t in tables]),
                    lens=torch.tensor(lens_g, dtype=torch.long),
                    in_order=len(groups) == 1 and not prefills and rows == list(range(row)),
                )
            )
        return batch

    @staticmethod
    def set_input_ids(batch: BatchInput, input_ids: Sequence[int]) -> None:
        if len(input_ids) != batch.num_tokens:
            raise ValueError(f"{len(input_ids)} input ids for {batch.num_tokens} scheduled tokens")
        batch.input_ids = torch.tensor(input_ids, dtype=torch.long)

    # ------------------------------------------------------------------ forward
    def _decode_attention(self, layer: int, group: DecodeGroup, q: Tensor) -> Tensor:
        """q (Bd, H, D) of one decode group -> (Bd, H, D)."""
        if self.use_kernel:
            q = q.float()  # the kernel reads fp32 queries, fp32 or bf16 keys and values
        y = attend_paged(
            q, self.cache.k[layer], self.cache.v[layer], group.tables, group.lens, self.use_kernel
        )
        return y.to(self.act)

    def _attention(self, layer: int, batch: BatchInput, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q (N, H, D), k/v (N, H_kv, D) of the new tokens (already in the cache) -> (N, H, D)."""
        H, Hkv = self.n_head, self.n_kv_head
        k_flat, v_flat = self.cache.k_flat[layer], self.cache.v_flat[layer]
        if len(batch.decodes) == 1 and batch.decodes[0].in_order:
            return self._decode_attention(layer, batch.decodes[0], q)
        out = torch.empty_like(q)
        for group in batch.decodes:
            qd = q.index_select(0, group.rows)
            out.index_copy_(0, group.rows, self._decode_attention(layer, group, qd))
        for p in batch.prefills:
            S = p.end - p.begin
            qp = q[p.begin : p.end].transpose(0, 1)[None]  # (1, H, S, D)
            if p.ctx_slots is None:
                kp = k[p.begin : p.end].transpose(0, 1)[None]  # (1, Hkv, S, D)
                vp = v[p.begin : p.end].transpose(0, 1)[None]
                y = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=H != Hkv)
            else:
                T = p.ctx_slots.numel()
                kp = k_flat.index_select(0, p.ctx_slots).transpose(0, 1)[None]  # (1, Hkv, T, D)
                vp = v_flat.index_select(0, p.ctx_slots).transpose(0, 1)[None]
                mask = causal_mask(p.start, S, T)
                y = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, enable_gqa=H != Hkv)
            out[p.begin : p.end] = y[0].transpose(0, 1)
        return out

    def _stackable(self, state: list[Any]) -> bool:
        return self.batch_recurrent_decode and all(
            hasattr(s, "stack") for s, r in zip(state, self.recurrent) if r
        )

    def _recurrent(self, layer: int, batch: BatchInput, h: Tensor) -> Tensor:
        """h (N, d_model) -> the recurrent mixer's output (N, d_model), each sequence's rows
        from (and advancing) its own state; the mixer checks that the state holds exactly
        the tokens before the rows."""
        mixer = self.model.layers[layer].mixer
        out = torch.empty_like(h)
        if batch.decode_states:
            states = [st[layer] for st in batch.decode_states]
            for state, start in zip(states, batch.decode_starts):
                if state.pos != start:
                    raise ValueError(f"a state holds {state.pos} tokens, asked to go on at {start}")
            stacked = type(states[0]).stack(states)
            rows = batch.decode_rows
            cos, sin = self.cos[:1], self.sin[:1]  # unused by a recurrent mixer
            y = mixer(h.index_select(0, rows)[:, None], MixerInput(cos, sin, 0, stacked))
            stacked.unstack(states)
            out.index_copy_(0, rows, y[:, 0])  # (Bd, d_model)
        for begin, end, start, state in batch.states:
            cos, sin = self.cos[start : start + end - begin], self.sin[start : start + end - begin]
            y = mixer(h[None, begin:end], MixerInput(cos, sin, start, state[layer]))  # (1, S, d)
            out[begin:end] = y[0]
        return out

    @torch.inference_mode()
    def forward(self, batch: BatchInput) -> Tensor:
        """Logits (n_sample, vocab_size) of the rows in batch.logits_rows."""
        if batch.input_ids is None:
            raise ValueError("input ids of the batch were not set")
        m = self.model
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        N = batch.num_tokens
        x = m.embed(batch.input_ids)  # (N, d_model)
        cos = self.cos[batch.positions][:, None]  # (N, 1, D)
        sin = self.sin[batch.positions][:, None]
        half = D // 2
        act = self.act
        for i, block in enumerate(m.layers):
            if self.recurrent[i]:
                x = x + self._recurrent(i, batch, block.norm1(x))
            else:
                h = block.norm1(x).to(act)
                qkv = gemm.linear(h, self.w_qkv[i])  # (N, (H + 2 Hkv) D)
                q = qkv[:, : H * D].view(N, H, D)
                k = qkv[:, H * D : (H + Hkv) * D].view(N, Hkv, D)
                v = qkv[:, (H + Hkv) * D :].view(N, Hkv, D)
                q = q * cos + torch.cat([-q[..., half:], q[..., :half]], -1) * sin
                k = k * cos + torch.cat([-k[..., half:], k[..., :half]], -1) * sin
                q, k = q.to(act), k.to(act)
                self.cache.k_flat[i].index_copy_(0, batch.slots, k)
                self.cache.v_flat[i].index_copy_(0, batch.slots, v)
                y = self._attention(i, batch, q, k, v)  # (N, H, D)
                x = x + gemm.linear(y.reshape(N, H * D), self.w_o[i])
            gu = gemm.linear(block.norm2(x).to(act), self.w_gate_up[i])  # (N, 2 d_ff)
            gate, up = gu.chunk(2, dim=-1)
            x = x + gemm.linear(F.silu(gate) * up, self.w_down[i])
        x = x.index_select(0, batch.logits_rows)  # (n_sample, d_model)
        return gemm.linear(m.norm(x).to(act), self.w_lm_head).float()
