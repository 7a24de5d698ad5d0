"""From a transformer to a hybrid: Mamba-2 layers initialised from attention weights.

The paper's mapping (Section 3): the linearised attention Σ_j (q_i·k_j) v_j is a linear RNN
with C ← W_Q, B ← W_K, x ← W_V and out ← W_O; GQA's shared keys and values are repeated over
each group (here: the mixer repeats B and x over its groups, so they keep H_kv heads). New
parameters keep the Mamba-2 init: the z gate, dt (and its bias), A_log, D and the conv.
MLPs, norms and embeddings are copied unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from minirepro.core.model import Attention, ModelConfig, Transformer
from minirepro.papers.hybrid.mamba import Mamba2Mixer

__all__ = ["init_from_attention", "replaced_layers", "to_hybrid"]


@torch.no_grad()
def init_from_attention(attn: Attention, cfg: ModelConfig, layer: int = 0) -> Mamba2Mixer:
    """A `Mamba2Mixer` holding an attention layer's projections.

    Args:
        attn: the core attention mixer (wq, wk, wv, wo).
        cfg: the model config; its `mixer_kwargs` give the Mamba options. The mixer takes
            the attention's heads (n_head, n_kv_head, head_dim) and d_state = head_dim.
    Returns:
        A new mixer on the attention's device and dtype.
    """
    if not isinstance(attn, Attention):
        raise TypeError(
            f"init_from_attention needs a core Attention layer, got {type(attn).__name__}"
        )
    kw = dict(cfg.mixer_kwargs)
    if kw.get("d_state", attn.head_dim) != attn.head_dim:
        raise ValueError(
            f"attention init needs d_state = head_dim = {attn.head_dim} (B ← W_K, C ← W_Q), "
            f"got d_state={kw['d_state']}"
        )
    heads = {"n_head": attn.n_head, "n_kv_head": attn.n_kv_head, "head_dim": attn.head_dim}
    mixer_cfg = replace(cfg, mixer_kwargs=kw | heads | {"d_state": attn.head_dim})
    w = attn.wq.weight
    mixer = Mamba2Mixer(mixer_cfg, layer).to(device=w.device, dtype=w.dtype)
    z, x, B, C, _ = mixer.in_proj.weight.split(mixer.split, dim=0)
    x.copy_(attn.wv.weight)
    B.copy_(attn.wk.weight)
    C.copy_(attn.wq.weight)
    mixer.out_proj.weight.copy_(attn.wo.weight)
    return mixer


def replaced_layers(n_layer: int, keep_fraction: float) -> list[int]:
    """Attention layers to replace so that about `keep_fraction` of them stay attention,
    spread evenly (the paper keeps every 2nd layer at 50%, every 4th at 25%)."""
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in [0, 1], got {keep_fraction}")
    n_keep = round(n_layer * keep_fraction)
    if n_keep == 0:
        return list(range(n_layer))
    stride = n_layer / n_keep
    keep = {int(round(i * stride + stride - 1)) for i in range(n_keep)}
    return [i for i in range(n_layer) if i not in keep]


def to_hybrid(
    model: Transformer,
    attention_layers: Iterable[int],
    *,
    init: str = "attention",
    mixer: str = "mamba2",
    mixer_kwargs: dict[str, Any] | None = None,
    seed: int | None = None,
) -> Transformer:
    """A new hybrid model: the layers listed in `attention_layers` become Mamba layers.

    Args:
        model: a core Transformer; its layers to replace must be attention layers.
        attention_layers: indices of the attention layers to replace (the rest are copied).
        init: "attention" (the paper: mamba2 from the layer's W_Q, W_K, W_V, W_O) or
            "random" (the Mamba mixer's own init, the baseline the paper compares with).
        mixer: "mamba2", or "mamba" (Mamba-1; random init only: its B and C are shared by
            all channels, so no attention weights map onto them).
        mixer_kwargs: Mamba options (see `minirepro.papers.hybrid.mamba`).
        seed: seeds the new parameters (z, dt, conv; everything with init="random").
    Returns:
        The hybrid, same device and dtype; `model` is left unchanged.
    """
    layers = sorted(set(attention_layers))
    cfg = model.cfg
    for i in layers:
        if not 0 <= i < cfg.n_layer:
            raise ValueError(f"layer {i} out of range for a model of {cfg.n_layer} layers")
        if cfg.mixer_of(i) != "attention":
            raise ValueError(f"layer {i} is {cfg.mixer_of(i)!r}, not an attention layer")
    if init not in ("attention", "random"):
        raise ValueError(f"init must be 'attention' or 'random', got {init!r}")
    if init == "attention" and mixer != "mamba2":
        raise ValueError("attention init maps onto the 'mamba2' mixer only")
    names = tuple(mixer if i in layers else cfg.mixer_of(i) for i in range(cfg.n_layer))
    kw = dict(mixer_kwargs or {})
    if mixer == "mamba2":
        kw = {"n_head": cfg.n_head, "n_kv_head": cfg.n_kv_head, "head_dim": cfg.head_dim} | kw
    new_cfg = replace(cfg, mixer=names, mixer_kwargs=kw)
    w = model.lm_head.weight
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device("meta"):
        hybrid = Transformer(new_cfg)
    # Copy every shared tensor; build the new mixers on the real device.
    for i, block in enumerate(hybrid.layers):
        if i in layers:
            if init == "attention":
                block.mixer = init_from_attention(model.layers[i].mixer, new_cfg, i)
            else:
                block.mixer = _random_mixer(new_cfg, i, mixer).to(device=w.device, dtype=w.dtype)
    shared = {k: v for k, v in model.state_dict().items()
              if not any(k.startswith(f"layers.{i}.mixer.") for i in layers)}  # fmt: skip
    hybrid.load_state_dict(shared, strict=False, assign=True)
    if new_cfg.tie_embeddings:
        hybrid.lm_head.weight = hybrid.embed.weight
    meta = [n for n, p in hybrid.named_parameters() if p.is_meta]
    if meta:
        raise RuntimeError(f"parameters left uninitialised: {meta[:3]}")
    return hybrid.train(model.training)


def _random_mixer(cfg: ModelConfig, layer: int, name: str) -> nn.Module:
    from minirepro.core.model import make_mixer

    mixer = make_mixer(replace(cfg, mixer=name), layer)
    for _pname, p in mixer.named_parameters():  # the core decoder's generic init first
        if p.ndim >= 2:
            nn.init.normal_(p, std=cfg.init_std)
    mixer.init_mixer_weights()
    return mixer
