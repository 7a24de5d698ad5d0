"""Weights to and from HF `LlamaForCausalLM`, so the core decoder is tested against
transformers' and the real SmolLM2 loads into it (`minirepro.core.pretrained`).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from minirepro.core.model import ModelConfig, Transformer


def _hf_names(cfg: ModelConfig) -> dict[str, str]:
    """Our parameter name -> HF LlamaForCausalLM name (attention layers only)."""
    names = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    for i in range(cfg.n_layer):
        if cfg.mixer_of(i) != "attention":
            raise ValueError(
                f"layer {i} uses mixer {cfg.mixer_of(i)!r}; HF Llama has attention only"
            )
        ours, hf = f"layers.{i}.", f"model.layers.{i}."
        names |= {
            ours + "norm1.weight": hf + "input_layernorm.weight",
            ours + "norm2.weight": hf + "post_attention_layernorm.weight",
            ours + "mixer.wq.weight": hf + "self_attn.q_proj.weight",
            ours + "mixer.wk.weight": hf + "self_attn.k_proj.weight",
            ours + "mixer.wv.weight": hf + "self_attn.v_proj.weight",
            ours + "mixer.wo.weight": hf + "self_attn.o_proj.weight",
            ours + "mlp.w_gate.weight": hf + "mlp.gate_proj.weight",
            ours + "mlp.w_up.weight": hf + "mlp.up_proj.weight",
            ours + "mlp.w_down.weight": hf + "mlp.down_proj.weight",
        }
    return names


def to_hf_config(cfg: ModelConfig):
    """The `transformers.LlamaConfig` of the same architecture."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_kv_head,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
    )


def config_from_hf(hf_config, **overrides: Any) -> ModelConfig:
    """ModelConfig of an HF LlamaConfig (default RoPE only)."""
    rope = (
        getattr(hf_config, "rope_parameters", None)
        or getattr(hf_config, "rope_scaling", None)
        or {}
    )
    if rope.get("rope_type", "default") not in ("default", None):
        raise ValueError(f"RoPE type {rope['rope_type']!r} is not supported")
    theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    if getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False):
        raise ValueError("Llama variants with attention or MLP biases are not supported")
    if getattr(hf_config, "hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {hf_config.hidden_act!r} is not supported (SwiGLU uses silu)")
    kw = dict(
        vocab_size=hf_config.vocab_size,
        n_layer=hf_config.num_hidden_layers,
        n_head=hf_config.num_attention_heads,
        n_kv_head=hf_config.num_key_value_heads,
        d_model=hf_config.hidden_size,
        head_dim=getattr(hf_config, "head_dim", None)
        or hf_config.hidden_size // hf_config.num_attention_heads,
        d_ff=hf_config.intermediate_size,
        max_seq_len=hf_config.max_position_embeddings,
        rope_theta=float(theta),
        norm_eps=hf_config.rms_norm_eps,
        tie_embeddings=bool(hf_config.tie_word_embeddings),
    )
    return ModelConfig(**(kw | overrides))


def state_dict_from_hf(hf_state: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Rename an HF Llama state dict to ours; raises on missing tensors or wrong shapes."""
    out = {}
    for ours, hf in _hf_names(cfg).items():
        if hf not in hf_state:
            raise KeyError(f"HF state dict lacks {hf!r}")
        out[ours] = hf_state[hf]
    return out


def from_hf(hf_model, **overrides: Any) -> Transformer:
    """Our Transformer with the weights of an HF `LlamaForCausalLM` (in float32)."""
    cfg = config_from_hf(hf_model.config, **overrides)
    model = Transformer(cfg)
    sd = state_dict_from_hf({k: v.float() for k, v in hf_model.state_dict().items()}, cfg)
    model.load_state_dict(sd, strict=False)
    missing = (
        set(model.state_dict()) - set(sd) - ({"lm_head.weight"} if cfg.tie_embeddings else set())
    )
    if missing:
        raise KeyError(f"weights missing after conversion: {sorted(missing)[:5]}")
    return model


def to_hf(model: Transformer):
    """An HF `LlamaForCausalLM` with this model's weights (attention-only configs)."""
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM(to_hf_config(model.cfg))
    ours = model.state_dict()
    hf_sd = {hf_name: ours[name] for name, hf_name in _hf_names(model.cfg).items()}
    result = hf.load_state_dict(hf_sd, strict=False)
    unexpected_missing = [k for k in result.missing_keys if k != "lm_head.weight"]
    if unexpected_missing:
        raise KeyError(f"HF weights left unset: {unexpected_missing[:5]}")
    if model.cfg.tie_embeddings:
        hf.tie_weights()
    return hf.to(model.embed.weight.dtype).eval()
