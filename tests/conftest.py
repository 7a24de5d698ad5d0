"""Shared fixtures: the real SmolLM2 is loaded once per test session; Triton's interpreter
for the modules that test Triton kernels on the CPU."""

import contextlib
import importlib
import sys

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


@pytest.fixture(scope="session")
def peaked_tiny_model():
    """A random 2-layer GQA decoder whose next-token distributions are peaked (so greedy
    ties with a reference are rare) but not one-hot. Shared read-only: do not train it."""
    from minirepro.core.model import ModelConfig, Transformer

    torch.manual_seed(1)
    cfg = ModelConfig(
        vocab_size=64,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        d_model=64,
        max_seq_len=256,
        tie_embeddings=False,
    )
    m = Transformer(cfg).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(40)  # larger output weights: peaked next-token distributions
    return m


@contextlib.contextmanager
def _interpreted_triton(*kernel_modules: str):
    """TRITON_INTERPRET=1, with triton and `kernel_modules` imported afresh under it.

    triton reads the flag when a function is decorated (its own library functions at import),
    so setting it for one test module means importing triton and the modules that decorate
    kernels anew, and putting the original modules back afterwards: the flag never holds for
    the whole pytest process, and one module's interpreted triton never leaks into another's.
    """

    def loaded() -> dict:
        return {
            name: module
            for name, module in sys.modules.items()
            if name in kernel_modules
            or (name.split(".")[0] == "triton" and not name.startswith("triton._C"))
        }

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        original = loaded()
        for name in original:
            del sys.modules[name]
        importlib.import_module("triton")
        try:
            yield
        finally:
            for name in loaded():
                del sys.modules[name]
            sys.modules.update(original)


@pytest.fixture(scope="session")
def interpreted_triton_for():
    """`with interpreted_triton_for("pkg.kernel_module", ...):` runs under Triton's interpreter
    (use it from a module-scoped fixture: re-importing triton costs about a second)."""
    return _interpreted_triton
