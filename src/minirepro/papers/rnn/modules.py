"""Head-wise RNN layers with their input projection, and the core model's token mixers.

`FlashRNNLayer(function, d_model, n_head)`: x (B, S, d_model) -> Wx = x W (B, S, Gw, N, D) ->
`flashrnn` -> h (B, S, N*D) -> output projection (B, S, d_model). Registered as the token
mixers "lstm", "slstm", "gru" and "elman" of `minirepro.core.model` (options in
`ModelConfig.mixer_kwargs`: `n_head` (default cfg.n_head), `head_dim`, `backend`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from minirepro.core.model import MixerInput, ModelConfig, register_mixer
from minirepro.papers.rnn.dispatch import flashrnn
from minirepro.papers.rnn.functions import FUNCTIONS, cell_spec

__all__ = ["FlashRNNLayer", "RNNMixer", "RNNState"]


class FlashRNNLayer(nn.Module):
    """A head-wise RNN with input and output projections.

    Args:
        function: "lstm", "slstm", "gru" or "elman".
        d_model: Width of the input and output.
        n_head: Heads N; each has its own D x D recurrent block per gate.
        head_dim: D; d_model // n_head if None.
        backend: Passed to `flashrnn`.
    """

    def __init__(
        self,
        function: str,
        d_model: int,
        n_head: int,
        head_dim: int | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.spec = cell_spec(function)
        self.function, self.backend = function, backend
        self.n_head = n_head
        self.head_dim = head_dim or d_model // n_head
        N, D, s = n_head, self.head_dim, self.spec
        self.wx = nn.Linear(d_model, s.n_gates_w * N * D, bias=False)
        self.R = nn.Parameter(torch.randn(s.n_gates_r, N, D, D) / D**0.5)
        # Flat, so the core model's init (which redraws every >= 2-d weight) keeps it.
        self.b = nn.Parameter(torch.zeros(s.n_gates_b * N * D))
        if function in ("lstm", "slstm"):  # forget gate open at init
            with torch.no_grad():
                self.b.view(s.n_gates_b, N, D)[1] = 1.0
        self.wo = nn.Linear(N * D, d_model, bias=False)

    def forward(self, x: Tensor, states: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (B, S, d_model), states (S_n, B, 1, N, D) or None -> (y (B, S, d_model), last)."""
        B, S, _ = x.shape
        N, D, s = self.n_head, self.head_dim, self.spec
        Wx = self.wx(x).view(B, S, s.n_gates_w, N, D)  # (B, S, Gw, N, D)
        b = self.b.view(s.n_gates_b, N, D)
        out, last = flashrnn(Wx, self.R, b, states, self.function, self.backend)
        h = out[0].reshape(B, S, N * D)  # (B, S, N*D)
        return self.wo(h), last


class RNNState:
    """Decoding state of one RNN mixer layer: the last states (S, B, 1, N, D)."""

    def __init__(self, states: Tensor) -> None:
        self.states = states
        self.fresh = True  # zeros: the sLSTM first-step rule applies

    def reorder(self, index: Tensor) -> None:
        self.states = self.states[:, index]


class RNNMixer(FlashRNNLayer):
    """`FlashRNNLayer` as a token mixer of the core decoder."""

    def __init__(self, cfg: ModelConfig, layer: int, function: str) -> None:
        kw: dict[str, Any] = dict(cfg.mixer_kwargs)
        super().__init__(
            kw.get("function", function),
            cfg.d_model,
            kw.get("n_head", cfg.n_head),
            kw.get("head_dim"),
            kw.get("backend", "auto"),
        )

    def new_cache(self, batch_size: int, max_len: int, device, dtype) -> RNNState:
        shape = (self.spec.n_states, batch_size, 1, self.n_head, self.head_dim)
        return RNNState(torch.zeros(shape, device=device, dtype=dtype))

    def forward(self, x: Tensor, inp: MixerInput) -> Tensor:  # type: ignore[override]
        if inp.cache is None:
            if inp.start_pos != 0:
                raise ValueError("start_pos > 0 needs a cache holding the RNN state")
            y, _ = super().forward(x)
            return y
        y, last = super().forward(x, None if inp.cache.fresh else inp.cache.states)
        inp.cache.states, inp.cache.fresh = last.detach(), False
        return y


def _factory(function: str):
    def make(cfg: ModelConfig, layer: int) -> RNNMixer:
        return RNNMixer(cfg, layer, function)

    make.__name__ = f"{function}_mixer"
    return make


for _name in FUNCTIONS:
    register_mixer(_name, _factory(_name))
