"""Fixtures of the serve tests: a tiny random decoder, its HF Llama twin, HF greedy outputs."""

import pytest
import torch

from minirepro.core.hf_llama import to_hf


@pytest.fixture(scope="session")
def tiny_model(peaked_tiny_model):
    """The shared peaked random decoder (tests/conftest.py)."""
    return peaked_tiny_model


@pytest.fixture(scope="session")
def tiny_hf(tiny_model):
    """transformers' LlamaForCausalLM with the same weights: the reference."""
    return to_hf(tiny_model)


def _hf_greedy(hf, prompts, max_new_tokens, eos_token_id=None):
    """HF `generate` greedy continuation of each prompt, one prompt at a time (no padding).

    With eos_token_id, HF stops after it (and the eos is part of the output, as in ours).
    """
    out = []
    n_threads = torch.get_num_threads()
    if hf.config.hidden_size <= 256:
        torch.set_num_threads(1)  # tiny model: one thread is fastest
    for p in prompts:
        x = torch.tensor([list(p)])
        kw = {} if eos_token_id is not None else {"min_new_tokens": max_new_tokens}
        r = hf.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=eos_token_id,
            **kw,
        )
        out.append(r[0, len(p) :].tolist())
    torch.set_num_threads(n_threads)
    return out


def _random_prompts(lengths, vocab_size, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture(scope="session")
def hf_greedy():
    """`hf_greedy(hf_model, prompts, max_new_tokens, eos_token_id=None) -> list[list[int]]`."""
    return _hf_greedy


@pytest.fixture(scope="session")
def random_prompts():
    """`random_prompts(lengths, vocab_size, seed) -> list[list[int]]`."""
    return _random_prompts


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one intra-op thread (and are not slowed down by other
    processes keeping the second core busy)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def kernel():
    """The serve engine's C++ kernels (built once per machine); skips without a compiler."""
    from minirepro.core.extension import KernelUnavailable
    from minirepro.papers.serve.kernels import load_kernel

    try:
        return load_kernel()
    except KernelUnavailable as exc:
        pytest.skip(str(exc))
