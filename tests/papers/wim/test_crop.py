"""Logits after [seg1, margin, crop, seg2] equal those of plain [seg1, seg2]: a margin
leaves no trace in the cache, on the core decoder, on HF transformers' DynamicCache, and
on the real SmolLM2."""

import pytest
import torch
from torch.testing import assert_close

from minirepro.papers.wim import HFLM, CoreLM, prefill


def _crop_vs_plain(lm, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    seg1, margin, seg2 = (torch.randint(0, vocab, (n,), generator=g).tolist() for n in (37, 19, 23))
    with torch.inference_mode():
        plain = lm.new_cache(128)
        prefill(lm, plain, seg1, chunk=16)
        ref = lm.forward(torch.tensor([seg2]), plain)  # (1, 23, V)
        cache = lm.new_cache(128)
        prefill(lm, cache, seg1, chunk=16)
        length = lm.cache_len(cache)
        prefill(lm, cache, margin, chunk=7)
        assert lm.cache_len(cache) == length + len(margin)
        lm.crop(cache, length)
        assert lm.cache_len(cache) == length
        out = lm.forward(torch.tensor([seg2]), cache)
    return out, ref


@pytest.mark.parametrize("seed", [0, 1])
def test_core_crop_restores_the_cache(tiny_core, tokenizer, seed):
    out, ref = _crop_vs_plain(CoreLM(tiny_core, tokenizer), tiny_core.cfg.vocab_size, seed)
    assert_close(out, ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_hf_dynamic_cache_crop_restores_the_cache(tiny_hf, tokenizer, seed):
    out, ref = _crop_vs_plain(HFLM(tiny_hf, tokenizer), tiny_hf.config.vocab_size, seed)
    assert_close(out, ref, rtol=0, atol=1e-4)


def test_core_and_hf_agree_through_a_crop(tiny_core, tiny_hf, tokenizer):
    out_core, _ = _crop_vs_plain(CoreLM(tiny_core, tokenizer), tiny_core.cfg.vocab_size, 2)
    out_hf, _ = _crop_vs_plain(HFLM(tiny_hf, tokenizer), tiny_hf.config.vocab_size, 2)
    assert_close(out_core, out_hf, rtol=0, atol=1e-4)


@pytest.mark.llm
def test_smollm2_crop_restores_the_cache(smollm2):
    from minirepro.papers.wim import as_lm

    out, ref = _crop_vs_plain(as_lm(smollm2), smollm2.model.cfg.vocab_size, 3)
    assert_close(out, ref, rtol=0, atol=1e-4)


def test_crop_out_of_range(tiny_core, tiny_hf, tokenizer):
    for lm in (CoreLM(tiny_core, tokenizer), HFLM(tiny_hf, tokenizer)):
        cache = lm.new_cache(32)
        prefill(lm, cache, [1, 2, 3])
        with pytest.raises(ValueError, match="crop length"):
            lm.crop(cache, 4)
