"""Shared fixtures: the real SmolLM2 is loaded once per test session."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _fixed_threads():
    # 2-core machines: more threads than cores only adds contention.
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield


@pytest.fixture(scope="session")
def smollm2():
    """Our Transformer with SmolLM2-135M-Instruct weights (cached safetensors)."""
    from minirepro.core.pretrained import load_smollm2

    return load_smollm2()


@pytest.fixture(scope="session")
def hf_smollm2():
    """transformers' own Llama on the same GGUF file: the reference."""
    from minirepro.core.pretrained import load_hf_smollm2

    return load_hf_smollm2()
