"""Sampling: KV cache equals recomputation, greedy equals HF generate, filters, seeds, stops."""

import pytest
import torch
from torch.testing import assert_close

from minirepro.core.generate import (
    SamplingParams,
    decode_from,
    filter_logits,
    generate,
    generate_many,
    sample_next,
    stream,
)
from minirepro.core.hf_llama import to_hf


@pytest.fixture(scope="module")
def model(peaked_tiny_model):
    """The shared peaked random decoder (tests/conftest.py)."""
    return peaked_tiny_model


def test_greedy_with_cache_equals_recomputation(model):
    prompt = torch.randint(0, 64, (3, 11))
    a = generate(model, prompt, max_new_tokens=30)
    b = generate(model, prompt, max_new_tokens=30, use_cache=False)
    assert a == b and all(len(r) == 30 for r in a)


def test_decode_from_a_cropped_cache_equals_generate(model):
    """decode_from continues a cache the caller owns: after feeding a detour and cropping it
    away, it yields the tokens `generate` gives for the prompt alone."""
    prompt = torch.randint(0, 64, (1, 9))
    detour = torch.randint(0, 64, (1, 6))
    expected = generate(model, prompt, max_new_tokens=12)[0]
    cache = model.new_cache(1, 64)
    with torch.inference_mode():
        model(prompt, cache)
        model(detour, cache)
        cache.crop(prompt.shape[1] - 1)  # forget the detour and the prompt's last token
        logits = model(prompt[:, -1:], cache)[:, -1]  # (1, V), as after the whole prompt
        step = lambda token: model(token[:, None], cache)[:, -1]  # noqa: E731
        got = [int(t) for t in decode_from(step, logits, SamplingParams(max_new_tokens=12))]
    assert got == expected


def test_sampled_with_cache_equals_recomputation(model):
    prompt = torch.randint(0, 64, (2, 5))
    params = SamplingParams(max_new_tokens=25, temperature=0.8, top_k=20, top_p=0.9, seed=7)
    assert generate(model, prompt, params) == generate(model, prompt, params, use_cache=False)


def test_greedy_equals_hf_generate(model):
    hf = to_hf(model)
    prompt = torch.randint(0, 64, (2, 9))
    ours = generate(model, prompt, max_new_tokens=20)
    ref = hf.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=20,
        min_new_tokens=20,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )
    assert ours == ref[:, 9:].tolist()


def test_seeded_sampling_reproducible(model):
    prompt = [3, 1, 4, 1, 5]
    p = dict(max_new_tokens=40, temperature=1.0)
    assert generate(model, prompt, seed=123, **p) == generate(model, prompt, seed=123, **p)
    assert generate(model, prompt, seed=123, **p) != generate(model, prompt, seed=124, **p)


def test_top_k_1_and_tiny_top_p_are_greedy(model):
    prompt = [7, 8, 9]
    greedy = generate(model, prompt, max_new_tokens=15)
    assert generate(model, prompt, max_new_tokens=15, temperature=1.5, top_k=1, seed=0) == greedy
    assert generate(model, prompt, max_new_tokens=15, temperature=1.5, top_p=1e-6, seed=0) == greedy


def test_filter_logits_matches_bruteforce():
    torch.manual_seed(0)
    logits = torch.randn(6, 30)
    kept_k = torch.isfinite(filter_logits(logits, top_k=5, top_p=1.0))
    assert (kept_k.sum(-1) == 5).all()
    for top_p in [0.3, 0.75, 0.95]:
        kept = torch.isfinite(filter_logits(logits, top_k=None, top_p=top_p))
        for row, k in zip(logits, kept):
            probs, order = row.softmax(-1).sort(descending=True)
            n = int((probs.cumsum(0) < top_p).sum()) + 1  # smallest prefix reaching top_p
            expect = torch.zeros(30, dtype=torch.bool)
            expect[order[:n]] = True
            assert torch.equal(k, expect)


def test_sampling_follows_the_distribution():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0]).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    draws = sample_next(logits, SamplingParams(temperature=0.7, top_k=4), g)
    freq = torch.bincount(draws, minlength=6).float() / len(draws)
    expect = torch.cat([(logits[0, :4] / 0.7).softmax(-1), torch.zeros(2)])
    assert_close(freq, expect, atol=0.015, rtol=0)


def test_stop_tokens_end_each_sequence(model):
    prompt = torch.randint(0, 64, (2, 6))
    free = generate(model, prompt, max_new_tokens=20)
    stop = free[0][4]
    out = generate(model, prompt, max_new_tokens=20, stop_tokens=(stop,))
    assert out[0] == free[0][: free[0].index(stop)]
    row1 = free[1][: free[1].index(stop)] if stop in free[1] else free[1]
    assert out[1] == row1
    steps = list(stream(model, prompt, SamplingParams(max_new_tokens=20, stop_tokens=(stop,))))
    assert len(steps) <= 20


def test_generate_many_mixed_lengths(model):
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8], [9]]
    out = generate_many(model, prompts, max_new_tokens=5)
    for p, o in zip(prompts, out):
        assert o == generate(model, p, max_new_tokens=5)[0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
    ],
)
def test_bad_sampling_params(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_bad_prompts(model):
    with pytest.raises(ValueError, match="non-empty"):
        generate(model, [], max_new_tokens=3)
    with pytest.raises(ValueError, match="equal lengths"):
        generate(model, [[1, 2], [3]], max_new_tokens=3)
