"""Mamba and Mamba-2 token mixers for the core decoder, with a conv + SSM state cache.

- `MambaMixer` ("mamba"): Mamba-1 in the layout of transformers' `MambaMixer` (in_proj to
  x and z, depthwise causal conv, x_proj to a low-rank dt and to B, C shared by all
  channels, dt_proj, A (d_inner, d_state), D, gate silu(z), out_proj).
- `Mamba2Mixer` ("mamba2"): the multi-head Mamba-2 of "The Mamba in the Llama", shaped
  like the attention layer it replaces so that it can be initialised from it: in_proj to
  z (H·P), x (H_kv·P, from W_V), B (H_kv·N, from W_K), C (H·N, from W_Q) and dt (H);
  x and B are repeated over each GQA group; one decay A per head; gated RMSNorm (or a
  plain silu gate), out_proj (from W_O). With n_kv_head = n_head it is transformers'
  `Mamba2Mixer` with n_groups = n_head, weight for weight; the layout (z, x, B, C, dt; conv
  over x, B, C before repeating; norm per head) is MambaInLlama's `Mamba2`.

Options come from `ModelConfig.mixer_kwargs` (shared by every Mamba layer of a model):
`d_state` (mamba: 16; mamba2: head_dim), `d_conv` (4), `expand` (mamba: 2), `dt_rank`
(mamba: ⌈d_model/16⌉), `chunk_size` (64), `use_conv` and `use_gate` (True: switch the conv
or the gate off), `gate_norm` (mamba2: True, transformers' gated RMSNorm; False: y·silu(z)).

`MambaState` is one layer's decoding state. For speculative decoding it keeps the last
verified state (a checkpoint) and the scan inputs (x, dt, B, C and the conv inputs) of the
tokens fed since; `crop(length)` advances the checkpoint by recomputing only the accepted
tokens — no per-token states are ever stored (the paper's Algorithm 2).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minirepro.core.model import MixerInput, ModelConfig, register_mixer
from minirepro.papers.hybrid.scan import selective_scan

__all__ = ["Mamba2Mixer", "MambaMixer", "MambaState", "checkpoint_states"]

_OPTIONS = {"d_state", "d_conv", "expand", "dt_rank", "chunk_size", "use_conv", "use_gate",
            "gate_norm", "dt_min", "dt_max"}  # fmt: skip


class MambaState:
    """Conv and SSM state of one Mamba layer, with a checkpoint for speculative decoding.

    Attributes:
        conv: (batch, conv_channels, d_conv - 1) last inputs of the causal conv (or None).
        ssm: (batch, H, P, N) the scan state.
        pos: how many tokens the state has absorbed.
    """

    def __init__(self, conv: Tensor | None, ssm: Tensor, mixer: _MambaBase) -> None:
        self.conv, self.ssm, self.pos = conv, ssm, 0
        self._mixer = mixer
        self._ckpt: tuple[int, Tensor | None, Tensor] | None = None
        self._pending: list[dict[str, Tensor]] = []

    def checkpoint(self) -> None:
        """Mark the current state verified; from now on the inputs of new tokens are kept
        so that `crop` can go back here."""
        self._ckpt = (self.pos, self.conv, self.ssm)
        self._pending = []

    def advance(self, conv: Tensor | None, ssm: Tensor, n: int, inputs: dict[str, Tensor]) -> None:
        """Set the state after n more tokens; keeps their inputs while a checkpoint is set."""
        self.conv, self.ssm, self.pos = conv, ssm, self.pos + n
        if self._ckpt is not None:
            self._pending.append({k: v.detach() for k, v in inputs.items()})

    def crop(self, length: int) -> None:
        """Go back to `length` tokens: recompute from the checkpoint over the kept tokens.

        The state at `length` becomes the new checkpoint.
        """
        if length == self.pos:
            if self._ckpt is not None:
                self.checkpoint()
            return
        if self._ckpt is None or not self._ckpt[0] <= length <= self.pos:
            held = "no checkpoint" if self._ckpt is None else f"a checkpoint at {self._ckpt[0]}"
            raise ValueError(
                f"a Mamba state at position {self.pos} with {held} cannot go back to {length}; "
                "call checkpoint() at the last verified position before feeding drafts"
            )
        start, conv, ssm = self._ckpt
        n = length - start
        if n:
            kept = {
                k: torch.cat([p[k] for p in self._pending], dim=1)[:, :n] for k in self._pending[0]
            }
            conv, ssm = self._mixer.recompute_state(conv, ssm, kept)
        self.conv, self.ssm, self.pos = conv, ssm, length
        self.checkpoint()

    @classmethod
    def stack(cls, states: list[MambaState]) -> MambaState:
        """One batch state of single-sequence states at any positions (the serving engine's
        batched decode); write it back with `unstack` after feeding the batch. Its pos
        starts at 0 and counts the tokens fed since."""
        if any(s._ckpt is not None for s in states):
            raise ValueError("states holding a speculative checkpoint cannot be stacked")
        first = states[0]
        conv = torch.cat([s.conv for s in states]) if first.conv is not None else None
        return cls(conv, torch.cat([s.ssm for s in states]), first._mixer)

    def unstack(self, states: list[MambaState]) -> None:
        """Write this stacked state back into the states it was stacked from (row b into
        states[b]), each advanced by the tokens fed since `stack`."""
        for b, s in enumerate(states):
            s.conv = self.conv[b : b + 1] if self.conv is not None else None
            s.ssm, s.pos = self.ssm[b : b + 1], s.pos + self.pos

    def reorder(self, index: Tensor) -> None:
        self.conv = self.conv[index] if self.conv is not None else None
        self.ssm = self.ssm[index]
        self._ckpt, self._pending = None, []


def checkpoint_states(cache: Any) -> None:
    """Checkpoint every Mamba layer of a core `Cache` (before feeding unverified tokens)."""
    for layer in cache.layers:
        if isinstance(layer, MambaState):
            layer.checkpoint()


def causal_conv(x: Tensor, conv: nn.Conv1d, state: Tensor | None) -> tuple[Tensor, Tensor]:
    """Depthwise causal conv along the sequence, continuing `state`.

    Args:
        x: (batch, seq, channels); state: (batch, channels, d_conv - 1) or None (zeros).
    Returns:
        silu(conv(x)) (batch, seq, channels) and the new state (batch, channels, d_conv - 1).
    """
    K = conv.kernel_size[0]
    xt = x.transpose(1, 2)  # (b, C, L)
    if state is None:
        state = xt.new_zeros(xt.shape[0], xt.shape[1], K - 1)
    full = torch.cat([state, xt], dim=-1)  # (b, C, K-1+L)
    # As a sum over the K taps: torch's grouped conv1d costs ~10 ms a call on small inputs here.
    w, L = conv.weight[:, 0], xt.shape[-1]  # (C, K)
    y = full[:, :, K - 1 :] * w[:, K - 1, None]  # (b, C, L)
    for k in range(K - 1):
        y = torch.addcmul(y, full[:, :, k : k + L], w[:, k, None])
    if conv.bias is not None:
        y = y + conv.bias[:, None]
    return F.silu(y).transpose(1, 2), full[:, :, full.shape[-1] - (K - 1) :]


def _inverse_softplus(y: Tensor) -> Tensor:
    return y + torch.log(-torch.expm1(-y))


class _MambaBase(nn.Module):
    """The forward pass both mixers share: project, conv, scan, gate, project out."""

    takes_documents = False  # a recurrent state crosses document boundaries
    n_ssm_head: int
    head_p: int
    d_state: int

    def _options(self, cfg: ModelConfig) -> dict[str, Any]:
        unknown = set(cfg.mixer_kwargs) - _OPTIONS - {"n_head", "n_kv_head", "head_dim"}
        if unknown:
            raise ValueError(f"unknown Mamba options {sorted(unknown)}; known: {sorted(_OPTIONS)}")
        kw = dict(cfg.mixer_kwargs)
        self.d_conv = int(kw.get("d_conv", 4))
        self.chunk_size = int(kw.get("chunk_size", 64))
        self.use_conv = bool(kw.get("use_conv", True))
        self.use_gate = bool(kw.get("use_gate", True))
        if self.d_conv < 1 or self.chunk_size < 1:
            raise ValueError(
                f"d_conv and chunk_size must be >= 1, got {self.d_conv}, {self.chunk_size}"
            )
        return kw

    # Subclasses define: _project, _ssm_inputs, _gate_out, A, conv_channels.
    def new_cache(self, batch_size: int, max_len: int, device, dtype) -> MambaState:
        conv = None
        if self.use_conv:
            conv = torch.zeros(
                batch_size, self.conv_channels, self.d_conv - 1, device=device, dtype=dtype
            )
        ssm = torch.zeros(
            batch_size, self.n_ssm_head, self.head_p, self.d_state, device=device, dtype=dtype
        )
        return MambaState(conv, ssm, self)

    def recompute_state(
        self, conv: Tensor | None, ssm: Tensor, kept: dict[str, Tensor]
    ) -> tuple[Tensor | None, Tensor]:
        """State after the kept tokens' inputs, from (conv, ssm) (speculative rollback)."""
        if conv is not None:
            full = torch.cat([conv, kept["xbc"].transpose(1, 2)], dim=-1)
            conv = full[:, :, full.shape[-1] - (self.d_conv - 1) :]
        _, ssm = selective_scan(kept["x"], kept["dt"], self.A, kept["B"], kept["C"], None, ssm)
        return conv, ssm

    @property
    def A(self) -> Tensor:
        return -torch.exp(self.A_log.float()).to(self.A_log.dtype)

    def forward(self, x: Tensor, inp: MixerInput) -> Tensor:
        """x (B, S, d_model) -> (B, S, d_model), continuing `inp.cache` when given."""
        state: MambaState | None = inp.cache
        if state is None and inp.start_pos != 0:
            raise ValueError("start_pos > 0 needs a cache holding the Mamba state")
        if state is not None and inp.start_pos != state.pos:
            raise ValueError(
                f"Mamba state holds {state.pos} tokens, asked to continue at {inp.start_pos}"
            )
        z, xbc, dt_raw = self._project(x)
        conv_state = None
        if self.use_conv:
            xbc_in = xbc
            xbc, conv_state = causal_conv(
                xbc, self.conv1d, state.conv if state is not None else None
            )
        xs, dt, B, C = self._ssm_inputs(xbc, dt_raw)
        y, ssm = selective_scan(
            xs, dt, self.A, B, C, self.D, state.ssm if state is not None else None, self.chunk_size
        )
        if state is not None:
            kept = {"x": xs, "dt": dt, "B": B, "C": C}
            if self.use_conv:
                kept["xbc"] = xbc_in
            state.advance(conv_state, ssm.detach(), x.shape[1], kept)
        return self._gate_out(y, z)


class MambaMixer(_MambaBase):
    """Mamba-1 (transformers' `MambaMixer` layout). Options: see the module docstring."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        kw = self._options(cfg)
        d = cfg.d_model
        self.d_inner = int(kw.get("expand", 2) * d)
        self.d_state = int(kw.get("d_state", 16))
        self.dt_rank = int(kw.get("dt_rank", math.ceil(d / 16)))
        self.n_ssm_head, self.head_p, self.conv_channels = self.d_inner, 1, self.d_inner
        self.in_proj = nn.Linear(d, 2 * self.d_inner, bias=False)  # [x, z]
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, self.d_conv, groups=self.d_inner)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, self.d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d, bias=False)
        self._dt_range = (float(kw.get("dt_min", 1e-3)), float(kw.get("dt_max", 0.1)))
        self.init_mixer_weights()

    @torch.no_grad()
    def init_mixer_weights(self) -> None:
        """Mamba's own init (S4D-real A, D = 1, dt in [dt_min, dt_max]); the core model
        calls it after its generic normal init."""
        if self.A_log.is_meta:
            return
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).expand(self.d_inner, -1)
        self.A_log.copy_(A.log())
        self.D.fill_(1.0)
        self.conv1d.reset_parameters()
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        lo, hi = self._dt_range
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(hi) - math.log(lo)) + math.log(lo))
        self.dt_proj.bias.copy_(_inverse_softplus(dt.clamp(min=1e-4)))

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, None]:
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, S, d_inner) each
        return z, xs, None

    def _ssm_inputs(self, xs: Tensor, dt_raw: None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        dt_low, B, C = self.x_proj(xs).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt_low))  # (B, S, d_inner)
        return xs[..., None], dt, B[:, :, None], C[:, :, None]  # P = 1; B, C shared by channels

    def _gate_out(self, y: Tensor, z: Tensor) -> Tensor:
        y = y.squeeze(-1)  # (B, S, d_inner)
        if self.use_gate:
            y = y * F.silu(z)
        return self.out_proj(y)


class Mamba2Mixer(_MambaBase):
    """Multi-head Mamba-2 shaped like a GQA attention layer (see the module docstring).

    Heads H = n_head with P = head_dim; B and x have n_kv_head heads, repeated over groups.
    """

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        kw = self._options(cfg)
        self.n_head = int(kw.get("n_head", cfg.n_head))
        self.n_kv_head = int(kw.get("n_kv_head", kw.get("n_head", cfg.n_kv_head)))
        self.head_dim = int(kw.get("head_dim", cfg.head_dim))
        self.d_state = int(kw.get("d_state", self.head_dim))
        self.gate_norm = bool(kw.get("gate_norm", True))
        if self.n_head % self.n_kv_head:
            raise ValueError(
                f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}"
            )
        H, Hkv, P, N = self.n_head, self.n_kv_head, self.head_dim, self.d_state
        self.n_ssm_head, self.head_p = H, P
        self.d_inner = H * P
        self.split = [H * P, Hkv * P, Hkv * N, H * N, H]  # z, x, B, C, dt
        self.conv_channels = Hkv * P + Hkv * N + H * N
        self.in_proj = nn.Linear(cfg.d_model, sum(self.split), bias=False)
        self.conv1d = nn.Conv1d(
            self.conv_channels, self.conv_channels, self.d_conv, groups=self.conv_channels
        )
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.A_log = nn.Parameter(torch.empty(H))
        self.D = nn.Parameter(torch.empty(H))
        self.norm_weight = nn.Parameter(torch.ones(H * P))
        self.norm_eps = float(cfg.norm_eps)
        self.out_proj = nn.Linear(H * P, cfg.d_model, bias=False)
        self._dt_range = (float(kw.get("dt_min", 1e-3)), float(kw.get("dt_max", 0.1)))
        self.init_mixer_weights()

    @torch.no_grad()
    def init_mixer_weights(self) -> None:
        """Mamba-2's own init (A in -[1, 16], D = 1, dt in [dt_min, dt_max], default conv)."""
        if self.A_log.is_meta:
            return
        if self.A_log.is_meta:
            return
        # A ~ U(1, 16) per head, as MambaInLlama's Mamba-2 (A_init_range=(1, 16)).
        self.A_log.copy_(torch.empty(self.n_head).uniform_(1.0, 16.0).log())
        self.D.fill_(1.0)
        self.norm_weight.fill_(1.0)
        self.conv1d.reset_parameters()
        lo, hi = self._dt_range
        dt = torch.exp(torch.rand(self.n_head) * (math.log(hi) - math.log(lo)) + math.log(lo))
        self.dt_bias.copy_(_inverse_softplus(dt.clamp(min=1e-4)))

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # x, B and C are adjacent columns: the conv runs over them together, no copy.
        z, xbc, dt = self.in_proj(x).split(
            [self.split[0], self.conv_channels, self.split[4]], dim=-1
        )
        return z, xbc, dt

    def _ssm_inputs(self, xbc: Tensor, dt_raw: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        b, S, _ = xbc.shape
        H, Hkv, P, N = self.n_head, self.n_kv_head, self.head_dim, self.d_state
        xs, B, C = xbc.split(self.split[1:4], dim=-1)
        group = H // Hkv
        xs = xs.reshape(b, S, Hkv, P).repeat_interleave(group, dim=2)  # (b, S, H, P)
        B = B.reshape(b, S, Hkv, N).repeat_interleave(group, dim=2)  # (b, S, H, N)
        C = C.reshape(b, S, H, N)
        dt = F.softplus(dt_raw + self.dt_bias)  # (b, S, H)
        return xs, dt, B, C

    def _gate_out(self, y: Tensor, z: Tensor) -> Tensor:
        b, S = y.shape[:2]
        y = y.reshape(b, S, self.d_inner)  # (b, S, H*P)
        if self.use_gate:
            y = y * F.silu(z)
        if self.gate_norm:  # gated RMSNorm over each head (MambaInLlama: group_size = P)
            g = y.float().reshape(b, S, self.n_head, self.head_dim)
            g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.norm_eps)
            y = self.norm_weight * g.reshape(b, S, self.d_inner).to(y.dtype)
        return self.out_proj(y)


register_mixer("mamba", MambaMixer)
register_mixer("mamba2", Mamba2Mixer)
