"""The RNN layers as token mixers of the core model: causal, incremental == full."""

import pytest
import torch
from torch.testing import assert_close

from minirepro.core.model import ModelConfig, Transformer
from minirepro.papers.rnn import FUNCTIONS, FlashRNNLayer


@pytest.mark.parametrize("function", list(FUNCTIONS))
def test_mixer_incremental_equals_full(cpu_ext, function):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=11, n_layer=2, n_head=2, d_model=16, mixer=(function, "attention"))
    model = Transformer(cfg)
    x = torch.randint(0, 11, (3, 10))
    full = model(x)
    x2 = x.clone()
    x2[:, 6:] = (x2[:, 6:] + 1) % 11
    assert_close(model(x2)[:, :6], full[:, :6])  # causal
    cache = model.new_cache(3, 10)
    inc = torch.cat([model(x[:, :4], cache), model(x[:, 4:5], cache), model(x[:, 5:], cache)], 1)
    assert_close(inc, full, rtol=1e-5, atol=1e-5)
    cache = model.new_cache(3, 10)
    model(x[:, :4], cache)
    cache.reorder(torch.tensor([2, 0]))
    assert_close(model(x[[2, 0], 4:], cache), full[[2, 0], 4:], rtol=1e-5, atol=1e-5)


def test_layer_trains_every_parameter(cpu_ext):
    torch.manual_seed(0)
    layer = FlashRNNLayer("slstm", d_model=16, n_head=2)
    before = {n: p.detach().clone() for n, p in layer.named_parameters()}
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    y, _ = layer(torch.randn(2, 7, 16))
    y.pow(2).mean().backward()
    opt.step()
    for n, p in layer.named_parameters():
        assert not torch.equal(p, before[n]), n


def test_backends_agree_in_layer(cpu_ext):
    torch.manual_seed(0)
    layer = FlashRNNLayer("gru", d_model=16, n_head=4)
    x = torch.randn(2, 9, 16)
    y_cpu, _ = layer(x)
    layer.backend = "reference"
    y_ref, _ = layer(x)
    assert_close(y_cpu, y_ref, rtol=1e-5, atol=1e-5)
