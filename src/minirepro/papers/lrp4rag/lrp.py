"""AttnLRP and CP-LRP for the core decoder, as gradient × input.

Layer-wise relevance propagation rules for transformers (Achtibat et al., ICML 2024) can be
written as ordinary gradients if a few backward passes are changed; then
`relevance = input * grad` at any layer, and one backward pass gives the relevance of every
input token for one output logit. `lrp_mode(model)` changes exactly those backward passes on
a core `Transformer` (and so on the real SmolLM2) and restores the model on exit; the forward
values stay the same:

- RMSNorm: the root-mean-square is treated as a constant (identity rule on the division).
- SiLU of the gated MLP: identity rule, d out / d x := silu(x) / x.
- The gated product silu(gate) * up: uniform rule, the gradient is halved.
- Attention: the gradients of q and k are divided by 4 and that of v by 2 (uniform rule on
  the two bilinear products q·k and softmax·v).
- Linear layers and the residual sums: plain gradient × input (no biases in the model).

CP-LRP (Ali et al., 2022) instead stops the gradient through q and k and through the
gate of the MLP, so the network is linear in its input along the paths left and relevance
is conserved exactly.

The rules are written with `detach` rather than custom autograd Functions, so that
`torch.autograd.grad(..., is_grads_batched=True)` can explain many logits in one vmapped
backward pass.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minirepro.core.model import Attention, RMSNorm, SwiGLU, Transformer

__all__ = [
    "VARIANTS",
    "Relevance",
    "identity_rule",
    "lrp_mode",
    "relevance_matrix",
    "scale_grad",
]

Variant = Literal["attnlrp", "cp"]
VARIANTS: tuple[str, ...] = ("attnlrp", "cp")
IDENTITY_EPS = 1e-10  # keeps silu(x) / x finite at x = 0, as lxt does


def scale_grad(x: Tensor, factor: float) -> Tensor:
    """x in the forward pass; the gradient divided by `factor` in the backward pass.

    The value is x / factor + (x - x / factor), exact in floating point for powers of two.
    """
    part = x / factor
    return part + (x - part).detach()


def identity_rule(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """fn(x) forward; backward as if fn were the linear map x -> (fn(x) / x) * x.

    The identity rule of AttnLRP for element-wise non-linearities: relevance passes through
    unchanged, since (fn(x) / x) * x * grad = fn(x) * grad.
    """
    y = fn(x)
    ratio = (y / (x + IDENTITY_EPS)).detach()
    return ratio * x + (y - ratio * x).detach()


def _norm_forward(self: RMSNorm, x: Tensor) -> Tensor:
    h = x.float()
    inv_rms = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps).detach()
    return self.weight * (h * inv_rms).to(x.dtype)


def _mlp_forward(self: SwiGLU, x: Tensor) -> Tensor:
    gate = identity_rule(F.silu, self.w_gate(x))
    return self.w_down(scale_grad(gate * self.w_up(x), 2))


def _cp_mlp_forward(self: SwiGLU, x: Tensor) -> Tensor:
    return self.w_down(F.silu(self.w_gate(x).detach()) * self.w_up(x))


def _attnlrp_attention(fn: Callable) -> Callable:
    def attention(q: Tensor, k: Tensor, v: Tensor, *, q_start: int) -> Tensor:
        return fn(scale_grad(q, 4), scale_grad(k, 4), scale_grad(v, 2), q_start=q_start)

    return attention


def _cp_attention(fn: Callable) -> Callable:
    def attention(q: Tensor, k: Tensor, v: Tensor, *, q_start: int) -> Tensor:
        return fn(q.detach(), k.detach(), v, q_start=q_start)

    return attention


@contextlib.contextmanager
def lrp_mode(model: Transformer, variant: Variant = "attnlrp") -> Iterator[Transformer]:
    """Within the block, `model`'s backward pass follows the LRP rules of `variant`.

    Forward values are unchanged. The model's modules are patched per instance (not per
    class) and restored on exit, also when the block raises.

    Args:
        model: a core Transformer whose layers are attention + SwiGLU + RMSNorm.
        variant: "attnlrp" (Achtibat et al. 2024) or "cp" (CP-LRP, Ali et al. 2022).
    Raises:
        ValueError: unknown variant, or a layer these rules do not cover.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown LRP variant {variant!r}; choose one of {VARIANTS}")
    if not isinstance(model, Transformer):
        raise ValueError(f"lrp_mode needs a core Transformer, got {type(model).__name__}")
    mlp_forward = _mlp_forward if variant == "attnlrp" else _cp_mlp_forward
    wrap_attention = _attnlrp_attention if variant == "attnlrp" else _cp_attention
    patched: list[tuple[nn.Module, str, object]] = []

    def patch(module: nn.Module, name: str, value: object) -> None:
        patched.append((module, name, module.__dict__.get(name, _ABSENT)))
        setattr(module, name, value)

    try:
        for i, block in enumerate(model.layers):
            for part, kind in [(block.mixer, Attention), (block.mlp, SwiGLU)]:
                if not isinstance(part, kind):
                    raise ValueError(
                        f"layer {i}: {type(part).__name__} has no LRP rule here "
                        f"(expected {kind.__name__})"
                    )
            patch(block.mixer, "attn_fn", wrap_attention(block.mixer.attn_fn))
            patch(block.mlp, "forward", types.MethodType(mlp_forward, block.mlp))
        for norm in [m for m in model.modules() if isinstance(m, RMSNorm)]:
            patch(norm, "forward", types.MethodType(_norm_forward, norm))
        yield model
    finally:
        for module, name, old in reversed(patched):
            if old is _ABSENT:
                delattr(module, name)
            else:
                setattr(module, name, old)


_ABSENT = object()


@dataclass
class Relevance:
    """Relevance of every input token for each teacher-forced response token.

    Attributes:
        matrix: (n_response, n_prompt + n_response - 1) relevance of input position j (the
            prompt, then the response but its last token) for the logit of response token
            i; zero where j is not before i (causality).
        n_prompt: number of prompt tokens; `matrix[:, :n_prompt]` is response × prompt.
        logits: (n_response,) the explained logits (of each actual response token).
        logprobs: (n_response,) log-probabilities of the response tokens.
    """

    matrix: Tensor
    n_prompt: int
    logits: Tensor
    logprobs: Tensor

    @property
    def prompt(self) -> Tensor:
        """(n_response, n_prompt) relevance of the prompt for each response token."""
        return self.matrix[:, : self.n_prompt]


def relevance_matrix(
    model: Transformer,
    prompt_ids: Sequence[int] | Tensor,
    response_ids: Sequence[int] | Tensor,
    variant: Variant = "attnlrp",
    chunk_size: int | None = 32,
) -> Relevance:
    """LRP relevance of the prompt (and earlier response) for each response token.

    One forward pass over prompt + response (teacher forcing); response token i explains
    the logit the model gave it at the previous position. The backward passes are batched:
    `chunk_size` logits at a time in one vmapped backward (None: one backward per token,
    which uses the least memory).

    Args:
        model: a core Transformer (e.g. `load_smollm2().model`).
        prompt_ids: (n_prompt,) token ids, n_prompt >= 1.
        response_ids: (n_response,) token ids, n_response >= 1.
        variant: "attnlrp" or "cp".
        chunk_size: logits per batched backward, or None.
    Returns:
        A `Relevance`; each row sums to about its logit (exactly for "cp").
    """
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long).reshape(-1)
    response = torch.as_tensor(response_ids, dtype=torch.long).reshape(-1)
    if prompt.numel() < 1 or response.numel() < 1:
        raise ValueError(
            f"need at least one prompt and one response token, got {prompt.numel()} and "
            f"{response.numel()}"
        )
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    device = model.embed.weight.device
    n_p, n_r = prompt.numel(), response.numel()
    ids = torch.cat([prompt, response[:-1]])[None].to(device)  # (1, S); S = n_p + n_r - 1
    target = response.to(device)
    captured: list[Tensor] = []

    def as_leaf(_module: nn.Module, _inp: object, out: Tensor) -> Tensor:
        leaf = out.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf

    hook = model.embed.register_forward_hook(as_leaf)
    frozen = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in frozen:  # no weight gradients: autograd then keeps less for the backward
            p.requires_grad_(False)
        with lrp_mode(model, variant), torch.enable_grad():
            h = model(ids, return_hidden=True)[0, n_p - 1 :]  # (n_r, d_model)
            emb = captured[0]  # (1, S, d_model)
            # The explained logits, h · W[token]; the other vocab rows need no graph.
            explained = (h * model.lm_head.weight[target]).sum(-1).float()  # (n_r,)
            with torch.no_grad():
                logprobs = model.lm_head(h).float().log_softmax(-1).gather(1, target[:, None])
            rows = []
            step = chunk_size or 1
            for start in range(0, n_r, step):
                stop = min(start + step, n_r)
                seeds = torch.eye(n_r, device=device)[start:stop]  # (c, n_r)
                if chunk_size is None:
                    (grad,) = torch.autograd.grad(explained, emb, seeds[0], retain_graph=True)
                    grad = grad[None]
                else:
                    (grad,) = torch.autograd.grad(
                        explained, emb, seeds, retain_graph=True, is_grads_batched=True
                    )  # (c, 1, S, d_model)
                rows.append((grad[:, 0] * emb[0]).sum(-1).float().detach())  # (c, S)
    finally:
        hook.remove()
        for p in frozen:
            p.requires_grad_(True)
    return Relevance(torch.cat(rows).cpu(), n_p, explained.detach().cpu(), logprobs[:, 0].cpu())
