"""NanoFlow: towards optimal large language model serving throughput.

arXiv 2408.12757 (Zhu et al., 2024).

Claim: serving throughput is bounded by compute; an engine gets close to that bound by
splitting each batch into nano-batches so that compute-, memory- and network-bound ops
overlap, by scheduling on the CPU one iteration ahead, and by offloading the KV cache of
finished turns for reuse in multi-round conversations (1.91x TensorRT-LLM, 68.5% of optimal
on LLaMA-2-70B).

Implemented here (work in progress): a vLLM-like CPU engine over the core `Transformer` —
paged KV cache with block tables and automatic prefix caching, continuous batching with
chunked prefill and preemption by recompute, sampling, async scheduling, nano-batched
execution and an on-disk KV offload.

Run: `minirepro run serve`; benchmark: `python benchmarks/serve.py`.
"""

from minirepro.papers.serve.engine import (
    EngineConfig,
    EngineStats,
    LLMEngine,
    RequestOutput,
)
from minirepro.papers.serve.kv_cache import BlockManager, PagedKVCache
from minirepro.papers.serve.sampling import SamplingParams

__all__ = [
    "BlockManager",
    "EngineConfig",
    "EngineStats",
    "LLMEngine",
    "PagedKVCache",
    "RequestOutput",
    "SamplingParams",
]
