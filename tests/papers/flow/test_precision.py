"""The trainer's precision reaches every flow experiment's training, and bad values fail early."""

import pytest
import torch
from torch import nn

from minirepro.core import precision
from minirepro.papers.flow import experiments as ex
from minirepro.papers.flow.losses import velocity_mse
from minirepro.papers.flow.models import VelocityMLP
from minirepro.papers.flow.repro import PRESETS, Config


def test_invalid_precision_fails_at_config_time():
    with pytest.raises(ValueError, match="precision must be one of"):
        Config(precision="float16")
    assert PRESETS["quick"].precision == "auto"


@pytest.mark.parametrize("asked,width,ran", [("auto", 256, "bf16"), ("auto", 64, "fp32"),
                                             ("fp32", 256, "fp32"), ("bf16", 64, "bf16")])  # fmt: skip
def test_train_flow_trains_in_the_configured_precision(monkeypatch, asked, width, ran):
    # A CPU with AMX (bf16 everywhere the numbers are computed; only the choice is tested).
    monkeypatch.setattr(precision, "cpu_features", lambda: precision.CpuFeatures(amx_bf16=True))
    seen = []
    real_train = ex.train
    monkeypatch.setattr(ex, "train", lambda *a, **k: seen.append(real_train(*a, **k)) or seen[-1])
    model = VelocityMLP(2, width, 2, seed=0)

    def get_batch(step, g):
        return torch.randn(32, 2, generator=g), torch.rand(32, generator=g)

    def loss_fn(m: nn.Module, batch):
        x, t = batch
        pred = m(x, t)
        assert pred.dtype == torch.float32  # the loss is computed in fp32 either way
        return velocity_mse(pred, -x)

    _, loss = ex.train_flow(model, loss_fn, get_batch, steps=3, batch_size=32, lr=1e-3, seed=0,
                            precision=asked)  # fmt: skip
    assert seen[0].precision == ran and loss > 0
    assert all(p.dtype == torch.float32 for p in model.parameters())
