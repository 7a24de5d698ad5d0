"""Fixtures for the flow tests: small random models, in float64 where precision matters."""

import pytest
import torch
from torch import nn


class TinyVelocity(nn.Module):
    """A smooth random MLP u(x, t) on (B, D) inputs, t a scalar or (B,)."""

    def __init__(self, dim: int, width: int = 32, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.l1 = nn.Linear(dim + 1, width)
        self.l2 = nn.Linear(width, dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x, t, **extras):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1).expand(x.shape[0], 1)
        return self.l2(torch.tanh(self.l1(torch.cat([x, t], -1))))


@pytest.fixture
def tiny_velocity():
    return TinyVelocity
