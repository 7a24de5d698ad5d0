import pytest
import torch

from minirepro.core.model import ModelConfig, Transformer


def test_embeds_input_equals_token_input_with_and_without_cache():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=30, n_layer=2, n_head=2, d_model=16))
    ids = torch.randint(0, 30, (2, 7))
    ref = model(ids)
    torch.testing.assert_close(model(None, embeds=model.embed(ids)), ref)
    cache = model.new_cache(2, 7)
    first = model(None, cache, embeds=model.embed(ids[:, :4]))
    rest = model(None, cache, embeds=model.embed(ids[:, 4:]))
    torch.testing.assert_close(torch.cat([first, rest], 1), ref, atol=1e-5, rtol=1e-5)


def test_embeds_and_ids_together_or_wrong_width_are_refused():
    model = Transformer(ModelConfig(vocab_size=30, n_layer=1, n_head=2, d_model=16))
    ids = torch.randint(0, 30, (1, 3))
    with pytest.raises(ValueError, match="not both"):
        model(ids, embeds=model.embed(ids))
    with pytest.raises(ValueError, match="embeds"):
        model(None, embeds=torch.randn(1, 3, 8))
