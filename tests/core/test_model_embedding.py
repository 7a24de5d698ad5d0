"""The pluggable input embedding of the core decoder (`register_embedding`)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from minirepro.core.model import ModelConfig, Transformer, register_embedding


class _PositionTagged(nn.Module):
    """A learned table plus a fixed position signal, to see positions arrive."""

    takes_positions = True

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.table = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.seen: list[torch.Tensor] = []

    def forward(self, idx, positions):
        self.seen.append(positions)
        return self.table(idx) + positions[..., None].float()


register_embedding("test_position_tagged", _PositionTagged)


def _cfg(**kw):
    return ModelConfig(vocab_size=11, d_model=16, n_head=2, n_layer=1, **kw)


def test_learned_embedding_is_the_default_and_ties():
    model = Transformer(_cfg())
    assert isinstance(model.embed, nn.Embedding)
    assert model.lm_head.weight is model.embed.weight
    assert "embed.weight" in model.state_dict()


def test_a_registered_embedding_gets_positions_also_with_a_cache():
    torch.manual_seed(0)
    model = Transformer(_cfg(embedding="test_position_tagged", tie_embeddings=False))
    x = torch.randint(0, 11, (2, 5))
    full = model(x)
    cache = model.new_cache(2, 8)
    model(x[:, :3], cache)
    step = model(x[:, 3:], cache)
    torch.testing.assert_close(step, full[:, 3:])
    assert model.embed.seen[-1].tolist() == [3, 4]  # the continued positions
    assert model.num_params(exclude_embeddings=True) == model.num_params() - 11 * 16


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(embedding="sinusoid"), "unknown embedding 'sinusoid'"),
        (dict(embedding="test_position_tagged"), "set tie_embeddings=False"),
    ],
)
def test_bad_embeddings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Transformer(_cfg(**kwargs))
