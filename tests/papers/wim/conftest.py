"""Fixtures of the wim tests: a tiny random decoder with SmolLM2's tokenizer (core and the
same weights in HF transformers), so the whole pipeline runs in a second."""

import pytest
import torch


@pytest.fixture(scope="session")
def tokenizer(smollm2):
    return smollm2.tokenizer


@pytest.fixture(scope="session")
def tiny_core(tokenizer):
    """A 2-layer GQA core decoder over SmolLM2's vocabulary (random weights)."""
    from minirepro.core.model import ModelConfig, Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=len(tokenizer), n_layer=2, n_head=4, n_kv_head=2, d_model=64, max_seq_len=4096
    )
    return Transformer(cfg).eval()


@pytest.fixture(scope="session")
def tiny_hf(tiny_core):
    """transformers' LlamaForCausalLM with the same weights as `tiny_core`."""
    from minirepro.core.hf_llama import to_hf

    return to_hf(tiny_core).eval()
