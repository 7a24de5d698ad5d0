"""The core decoder against HF transformers' Llama, and its cache and plug-in points."""

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from minirepro.core.hf_llama import from_hf, to_hf
from minirepro.core.model import KVCache, ModelConfig, Transformer, register_mixer

CONFIGS = [
    # (n_layer, n_head, n_kv_head, d_model, head_dim, tie, theta)
    (2, 4, 4, 64, None, True, 10000.0),  # MHA
    (3, 6, 2, 96, None, False, 100000.0),  # GQA, untied, SmolLM2's theta
    (2, 4, 1, 64, None, True, 500000.0),  # MQA
    (2, 3, 3, 48, 32, False, 10000.0),  # head_dim != d_model / n_head
]


def _model(cfg_tuple, vocab=101, seed=0, **kw) -> Transformer:
    n_layer, n_head, n_kv_head, d_model, head_dim, tie, theta = cfg_tuple
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=vocab,
        n_layer=n_layer,
        n_head=n_head,
        n_kv_head=n_kv_head,
        d_model=d_model,
        head_dim=head_dim,
        tie_embeddings=tie,
        rope_theta=theta,
        max_seq_len=128,
        **kw,
    )
    model = Transformer(cfg)
    with torch.no_grad():  # norm gains away from 1 so a wrong norm mapping would show
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("cfg_tuple", CONFIGS, ids=["mha", "gqa-untied", "mqa", "headdim32"])
def test_logits_and_grads_equal_hf_llama(cfg_tuple):
    model = _model(cfg_tuple)
    hf = to_hf(model).train()
    x = torch.randint(0, 101, (3, 37))
    ours, ref = model(x), hf(x).logits
    assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # Gradients of the same loss agree parameter by parameter.
    ours.logsumexp(-1).mean().backward()
    ref.logsumexp(-1).mean().backward()
    hf_params = dict(hf.named_parameters())
    assert_close(
        model.embed.weight.grad, hf_params["model.embed_tokens.weight"].grad, rtol=1e-4, atol=1e-6
    )
    assert_close(
        model.layers[0].mixer.wk.weight.grad,
        hf_params["model.layers.0.self_attn.k_proj.weight"].grad,
        rtol=1e-4,
        atol=1e-6,
    )
    assert_close(
        model.layers[-1].mlp.w_gate.weight.grad,
        hf_params[f"model.layers.{len(model.layers) - 1}.mlp.gate_proj.weight"].grad,
        rtol=1e-4,
        atol=1e-6,
    )


@pytest.mark.parametrize("cfg_tuple", CONFIGS[:2], ids=["mha", "gqa-untied"])
def test_hf_round_trip(cfg_tuple):
    model = _model(cfg_tuple)
    back = from_hf(to_hf(model))
    assert (
        back.cfg.n_kv_head == model.cfg.n_kv_head
        and back.cfg.tie_embeddings == model.cfg.tie_embeddings
    )
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("chunks", [[1] * 9, [5, 4], [3, 1, 5], [9]])
def test_kv_cache_equals_full_recomputation(chunks):
    model = _model(CONFIGS[1]).eval()
    x = torch.randint(0, 101, (2, sum(chunks)))
    full = model(x)
    cache = model.new_cache(2, 16)
    parts, start = [], 0
    for n in chunks:
        parts.append(model(x[:, start : start + n], cache))
        start += n
    assert cache.pos == x.shape[1]
    assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)
    # Cropping and re-feeding gives the same logits again.
    cache.crop(4)
    assert_close(model(x[:, 4:], cache), full[:, 4:], rtol=1e-5, atol=1e-5)


def test_eager_attention_equals_sdpa():
    model = _model(CONFIGS[1])
    eager = Transformer(
        ModelConfig(**(model.cfg.to_dict() | {"attention": "eager", "mixer": "attention"}))
    )
    eager.load_state_dict(model.state_dict())
    x = torch.randint(0, 101, (2, 20))
    assert_close(eager(x), model(x), rtol=1e-5, atol=1e-5)


class CumMean(nn.Module):
    """A toy causal token mixer: running mean of a projection, with a cache of the sum."""

    def __init__(self, cfg, layer):
        super().__init__()
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def new_cache(self, batch_size, max_len, device, dtype):
        return {
            "sum": torch.zeros(batch_size, 1, self.proj.out_features, device=device, dtype=dtype)
        }

    def forward(self, x, inp):
        h = self.proj(x)
        prev = inp.cache["sum"] if inp.cache is not None else 0
        sums = prev + h.cumsum(1)
        if inp.cache is not None:
            inp.cache["sum"] = sums[:, -1:]
        n = torch.arange(inp.start_pos + 1, inp.start_pos + x.shape[1] + 1, dtype=x.dtype)
        return sums / n[None, :, None]


def test_pluggable_token_mixer_per_layer():
    register_mixer("cummean", CumMean)
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=50, n_layer=3, n_head=2, d_model=32, mixer=("cummean", "attention", "cummean")
    )
    model = Transformer(cfg)
    assert isinstance(model.layers[0].mixer, CumMean) and isinstance(model.layers[2].mixer, CumMean)
    x = torch.randint(0, 50, (2, 12))
    full = model(x)
    # causal: the prefix's logits do not depend on later tokens
    x2 = x.clone()
    x2[:, 8:] = (x2[:, 8:] + 1) % 50
    assert_close(model(x2)[:, :8], full[:, :8])
    cache = model.new_cache(2, 12)
    assert isinstance(cache.layers[1], KVCache)
    inc = torch.cat([model(x[:, :7], cache), model(x[:, 7:], cache)], 1)
    assert_close(inc, full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="HF Llama has attention only"):
        to_hf(model)


def test_every_parameter_trains():
    model = _model(CONFIGS[1]).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randint(0, 101, (4, 16))
    loss = nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    opt.step()
    unchanged = [k for k, v in model.state_dict().items() if torch.equal(v, before[k])]
    assert not unchanged


def test_tied_embeddings_share_storage():
    model = _model(CONFIGS[0])
    assert model.lm_head.weight is model.embed.weight
    n_untied = _model(CONFIGS[1]).num_params()
    assert n_untied > 0 and model.num_params() == sum(p.numel() for p in set(model.parameters()))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_head": 4, "n_kv_head": 3}, "multiple of n_kv_head"),
        ({"d_model": 65, "n_head": 4}, "not divisible"),
        ({"n_layer": 2, "mixer": ("attention",)}, "mixer lists 1 names"),
        ({"vocab_size": 0}, "vocab_size must be positive"),
        ({"attention": "nope"}, "unknown attention 'nope'"),
        ({"mixer": "nope"}, "unknown token mixer 'nope'"),
        ({"mask": "sliding_window_4"}, "supports mask='causal' only"),
    ],
)
def test_bad_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Transformer(ModelConfig(**({"d_model": 64, "n_head": 4} | kwargs)))


def test_bad_input_errors():
    model = _model(CONFIGS[0])
    with pytest.raises(ValueError, match="token ids must lie"):
        model(torch.tensor([[0, 101]]))
    with pytest.raises(ValueError, match="exceeds the limit"):
        model(torch.zeros(1, 129, dtype=torch.long))
    with pytest.raises(ValueError, match="batch, seq"):
        model(torch.zeros(5, dtype=torch.long))
    cache = model.new_cache(1, 4)
    with pytest.raises(ValueError, match="exceeds the limit of 4"):
        model(torch.zeros(1, 5, dtype=torch.long), cache)
