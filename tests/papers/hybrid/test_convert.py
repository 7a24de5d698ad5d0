"""to_hybrid: replaced layers, copied weights, attention init."""

import pytest
import torch
from torch.testing import assert_close

from minirepro.core.model import ModelConfig, Transformer
from minirepro.papers.hybrid import replaced_layers, to_hybrid


def _model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=50, n_layer=4, d_model=32, n_head=4, n_kv_head=2))


def test_to_hybrid_copies_shared_weights_and_maps_attention():
    model = _model()
    hybrid = to_hybrid(model, [1, 3], seed=0)
    assert hybrid.cfg.mixer == ("attention", "mamba2", "attention", "mamba2")
    sd, hsd = model.state_dict(), hybrid.state_dict()
    for k in sd:
        if not k.startswith(("layers.1.mixer", "layers.3.mixer")):
            assert torch.equal(sd[k], hsd[k]), k
    m, a = hybrid.layers[1].mixer, model.layers[1].mixer
    z, x, B, C, dt = m.in_proj.weight.split(m.split)
    assert torch.equal(x, a.wv.weight) and torch.equal(B, a.wk.weight)
    assert torch.equal(C, a.wq.weight) and torch.equal(m.out_proj.weight, a.wo.weight)
    assert hybrid.lm_head.weight is hybrid.embed.weight
    ids = torch.randint(0, 50, (2, 9))
    hybrid(ids).sum().backward()  # trains: every parameter gets a gradient
    assert all(p.grad is not None for p in hybrid.parameters())
    assert_close(model(ids), _model()(ids))  # the teacher is untouched


def test_random_init_differs_and_bad_requests_fail():
    model = _model()
    rnd = to_hybrid(model, [0], init="random", seed=1)
    assert not torch.equal(rnd.layers[0].mixer.out_proj.weight, model.layers[0].mixer.wo.weight)
    assert to_hybrid(model, [0], init="random", mixer="mamba", seed=1).cfg.mixer[0] == "mamba"
    with pytest.raises(ValueError, match="out of range"):
        to_hybrid(model, [4])
    with pytest.raises(ValueError, match="not an attention layer"):
        to_hybrid(to_hybrid(model, [0]), [0])
    with pytest.raises(ValueError, match="mamba2"):
        to_hybrid(model, [0], mixer="mamba")


def test_replaced_layers_keeps_evenly_spread_attention():
    assert replaced_layers(8, 0.5) == [0, 2, 4, 6]
    assert replaced_layers(8, 0.25) == [0, 1, 2, 4, 5, 6]
    assert replaced_layers(4, 0.0) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        replaced_layers(4, 1.5)
