"""Mamba mixers against transformers' own torch paths, the linear-attention reduction, and
prefill / step / rollback equivalence."""

import math

import pytest
import torch
from torch.testing import assert_close

from minirepro.core.model import MixerInput, ModelConfig, Transformer, rope_cos_sin
from minirepro.papers.hybrid import (
    Mamba2Mixer,
    MambaMixer,
    checkpoint_states,
    recurrent_scan,
    ssd_scan,
)

transformers = pytest.importorskip("transformers")


def _inp(S: int, start: int = 0, cache=None) -> MixerInput:
    cos, sin = rope_cos_sin(torch.arange(start, start + S), 16, 10000.0)
    return MixerInput(cos, sin, start, cache)


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its init (D = 1, norm = 1 would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def _assert_same_outputs_and_grads(ours, hf, S: int, d: int) -> None:
    """Outputs, input gradients and every parameter's gradient, ours vs transformers'."""
    x = torch.randn(2, S, d, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y_ref = ours(x, _inp(S)), hf(x2)
    assert_close(y, y_ref, atol=1e-5, rtol=1e-4)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-4)
    hf_params = dict(hf.named_parameters())
    for n, p in ours.named_parameters():
        ref = hf_params[n.replace("norm_weight", "norm.weight")].grad
        assert_close(p.grad, ref, atol=1e-4, rtol=1e-4, msg=n)


@pytest.mark.parametrize("S", [1, 7, 33])
def test_mamba1_equals_transformers(S):
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer as HFMixer

    torch.manual_seed(0)
    d, N = 32, 8
    cfg = ModelConfig(d_model=d, n_head=4, mixer="mamba", mixer_kwargs={"d_state": N, "expand": 2})
    ours = MambaMixer(cfg, 0)
    _perturb(ours, 1)
    hf_cfg = MambaConfig(
        hidden_size=d, state_size=N, intermediate_size=2 * d, conv_kernel=4,
        time_step_rank=ours.dt_rank, use_bias=False, use_conv_bias=True, num_hidden_layers=1,
    )  # fmt: skip
    hf = HFMixer(hf_cfg, 0).eval()
    hf.load_state_dict(ours.state_dict())
    _assert_same_outputs_and_grads(ours, hf, S, d)


@pytest.mark.parametrize(("S", "chunk"), [(1, 8), (13, 4), (40, 16)])
def test_mamba2_equals_transformers(S, chunk):
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HFMixer

    torch.manual_seed(0)
    d, H, P, N = 32, 4, 16, 8
    cfg = ModelConfig(
        d_model=d, n_head=H, n_kv_head=H, head_dim=P, mixer="mamba2",
        mixer_kwargs={"d_state": N, "chunk_size": chunk},
    )  # fmt: skip
    ours = Mamba2Mixer(cfg, 0)
    _perturb(ours, 2)
    hf_cfg = Mamba2Config(
        hidden_size=d, num_heads=H, head_dim=P, state_size=N, expand=H * P // d, n_groups=H,
        conv_kernel=4, chunk_size=5, use_bias=False, use_conv_bias=True,
        layer_norm_epsilon=cfg.norm_eps, num_hidden_layers=1,
    )  # fmt: skip
    hf = HFMixer(hf_cfg, 0).eval()
    sd = {k.replace("norm_weight", "norm.weight"): v for k, v in ours.state_dict().items()}
    hf.load_state_dict(sd)
    _assert_same_outputs_and_grads(ours, hf, S, d)


@pytest.mark.parametrize(
    ("L", "chunk", "per_state"), [(1, 4, False), (19, 4, False), (19, 64, False), (19, 4, True)]
)
def test_ssd_scan_equals_recurrent_with_state(L, chunk, per_state):
    g = torch.Generator().manual_seed(L + chunk)
    b, H, P, N = 2, 3, 5, 4
    x = torch.randn(b, L, H, P, generator=g, dtype=torch.float64)
    dt = torch.rand(b, L, H, generator=g, dtype=torch.float64) + 0.1
    A = -torch.rand(H, generator=g, dtype=torch.float64) * 2
    B = torch.randn(b, L, H, N, generator=g, dtype=torch.float64)
    C = torch.randn(b, L, H, N, generator=g, dtype=torch.float64)
    D = torch.randn(H, generator=g, dtype=torch.float64)
    h0 = torch.randn(b, H, P, N, generator=g, dtype=torch.float64)
    y_ref, h_ref = recurrent_scan(x, dt, A, B, C, D, h0)
    if per_state:  # A (H, N) has no chunked form: the loop with A repeated is the same scan
        y2, h2 = recurrent_scan(x, dt, A[:, None].expand(H, N), B, C, D, h0)
    else:
        y2, h2 = ssd_scan(x, dt, A, B, C, D, h0, chunk_size=chunk)
    assert_close(y2, y_ref)
    assert_close(h2, h_ref)


def test_mamba2_without_decay_conv_gate_is_causal_linear_attention():
    """y_i = W_O Σ_{j<=i} (q_i·k_j) v_j with GQA, once the mixer holds W_Q, W_K, W_V, W_O."""
    from minirepro.papers.hybrid import init_from_attention

    torch.manual_seed(0)
    cfg = ModelConfig(
        d_model=48, n_head=4, n_kv_head=2, head_dim=12,
        mixer_kwargs={"use_conv": False, "use_gate": False, "gate_norm": False},
    )  # fmt: skip
    attn_model = Transformer(cfg)
    attn = attn_model.layers[0].mixer
    mixer = init_from_attention(attn, cfg)
    with torch.no_grad():  # no decay (A = 0), dt = 1, no skip
        mixer.A_log.fill_(-math.inf)
        mixer.dt_bias.fill_(math.log(math.e - 1))
        H, P = cfg.n_head, cfg.head_dim
        mixer.in_proj.weight[-H:].zero_()
        mixer.D.zero_()
    x = torch.randn(2, 11, cfg.d_model)
    y = mixer(x, _inp(11))
    q = attn.wq(x).view(2, 11, 4, 12)
    k = attn.wk(x).view(2, 11, 2, 12).repeat_interleave(2, dim=2)
    v = attn.wv(x).view(2, 11, 2, 12).repeat_interleave(2, dim=2)
    scores = torch.einsum("bihd,bjhd->bhij", q, k).tril()  # (B, H, S, S) causal, no softmax
    ref = attn.wo(torch.einsum("bhij,bjhd->bihd", scores, v).reshape(2, 11, H * P))
    assert_close(y, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mixer", ["mamba", "mamba2"])
def test_prefill_then_steps_equal_one_forward(mixer):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=40, n_layer=3, d_model=32, n_head=4, n_kv_head=2,
        mixer=(mixer, "attention", mixer), mixer_kwargs={"chunk_size": 8},
    )  # fmt: skip
    model = Transformer(cfg).eval()
    ids = torch.randint(0, 40, (2, 29))
    full = model(ids)
    cache = model.new_cache(2, 32)
    parts = [model(ids[:, :13], cache)]
    parts += [model(ids[:, i : i + 1], cache) for i in range(13, 20)]
    parts.append(model(ids[:, 20:], cache))  # a second multi-token chunk from a state
    assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-4)


def test_crop_recomputes_accepted_tokens_from_checkpoint():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, n_layer=2, d_model=32, n_head=4, mixer=("mamba2", "mamba"))
    model = Transformer(cfg).eval()
    ids = torch.randint(0, 40, (1, 20))
    cache = model.new_cache(1, 32)
    model(ids[:, :10], cache)
    checkpoint_states(cache)
    model(ids[:, 10:13], cache)  # drafts fed in pieces: one multi-token pass, then steps
    model(ids[:, 13:14], cache)
    model(torch.randint(0, 40, (1, 4)), cache)
    cache.crop(12)  # keep two of the ten drafted tokens
    state = cache.layers[0]
    assert state.pos == 12 and not state._pending
    rest = model(ids[:, 12:], cache)
    assert_close(rest, model(ids)[:, 12:], atol=1e-5, rtol=1e-4)


def test_crop_without_checkpoint_is_a_clear_error():
    cfg = ModelConfig(vocab_size=40, n_layer=1, d_model=32, n_head=4, mixer="mamba2")
    model = Transformer(cfg).eval()
    cache = model.new_cache(1, 16)
    model(torch.randint(0, 40, (1, 5)), cache)
    with pytest.raises(ValueError, match="checkpoint"):
        cache.crop(3)


def test_bad_options_and_documents_are_rejected():
    with pytest.raises(ValueError, match="unknown Mamba options"):
        Transformer(ModelConfig(vocab_size=8, n_layer=1, mixer="mamba", mixer_kwargs={"dstate": 4}))
    model = Transformer(ModelConfig(vocab_size=8, n_layer=1, d_model=32, n_head=4, mixer="mamba2"))
    with pytest.raises(ValueError, match="cannot separate documents"):
        model(torch.zeros(1, 4, dtype=torch.long), document_ids=torch.tensor([[0, 0, 1, 1]]))


def test_core_init_keeps_mamba_init():
    model = Transformer(ModelConfig(vocab_size=8, n_layer=1, d_model=32, n_head=4, mixer="mamba"))
    m = model.layers[0].mixer
    assert_close(m.A_log[0].exp(), torch.arange(1.0, m.d_state + 1))
    assert float(m.conv1d.weight.detach().std()) > 0.1  # PyTorch's conv init, not normal(0, 0.02)
