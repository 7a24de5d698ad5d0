"""NanoFlow: towards optimal large language model serving throughput.

arXiv 2408.12757 (Zhu et al., 2024).

Claim: serving throughput is bounded by compute; an engine gets close to that bound by
splitting each batch into nano-batches so that compute-, memory- and network-bound ops
overlap, by scheduling on the CPU one iteration ahead, and by offloading the KV cache of
finished turns for reuse in multi-round conversations (1.91x TensorRT-LLM, 68.5% of optimal
on LLaMA-2-70B).

Implemented here, with vLLM's names where vLLM has the concept (`LLMEngine`, `SamplingParams`,
`EngineConfig` fields such as `max_num_batched_tokens`), on the CPU, over the core `Transformer`
(random weights or the real SmolLM2-135M-Instruct):
- a paged KV cache (blocks per layer, free list, reference counts, block tables) with automatic
  prefix caching over a sha256 hash chain of full blocks (rooted in the model's identity)
  and LRU eviction (kv_cache.py);
- a varlen model runner: prefill chunks and decode tokens of many sequences in one forward,
  K/V written into their slots (runner.py), with two C++ CPU kernels built on first use
  (kernels.py, csrc/): decode attention straight from the paged cache, one pass over the KV
  bytes (paged_attention.py), and a packed GEMM for the few rows of a decode step, oneDNN
  on pre-packed weights above that (gemm.py); torch formulations where they cannot build;
- number formats (dtypes.py, `EngineConfig.dtype`): fp32; bf16 weights and KV cache (oneDNN's
  AMX / AVX512-BF16 matmuls); weight-only int8 decode GEMMs with per-channel scales;
  float32 with a warning where the CPU has no native bf16;
- continuous batching with chunked prefill under a token budget and preemption by
  recompute (scheduler.py), which alone admits, preempts and finishes a sequence; a
  failed model step fails only its requests, in every mode; sampling with per-request
  seeds, stop ids, stop strings and
  incremental detokenisation (sampling.py);
- async scheduling (iteration i+1 formed while i computes) and nano-batched execution
  (k nano-batches, or the cost-model search of nanobatch/), both token-identical to the
  plain engine (engine.py); KV offload of finished conversation turns to LRU-bounded
  safetensors files with checksums, reused up to the longest common prefix (offload.py);
- an OpenAI-compatible server (server.py, async_engine.py, metrics.py) with admission
  limits (admission.py: 413, prompts per request, 429 + Retry-After), its OpenAPI schema at
  /openapi.json, and a loopback load driver for tests and soaks (loadtest.py).

Deviations: no CUDA streams (CPU only); nano-batches run whole, one after another, so what
overlaps is host work (sampling, detokenisation, offload I/O) with the next nano-batch's
compute, not GEMMs with attention; preemption recomputes (no swap). See NOTES.md.

Run: `minirepro run serve`; benchmark: `python benchmarks/serve.py`.
"""

from minirepro.papers.serve.engine import (
    EngineConfig,
    EngineStats,
    LLMEngine,
    RequestOutput,
)
from minirepro.papers.serve.kv_cache import BlockManager, PagedKVCache
from minirepro.papers.serve.repro import CLAIMS, PAPER, PRESETS, Config, run
from minirepro.papers.serve.sampling import SamplingParams

__all__ = [
    "CLAIMS",
    "PAPER",
    "PRESETS",
    "BlockManager",
    "Config",
    "EngineConfig",
    "EngineStats",
    "LLMEngine",
    "PagedKVCache",
    "RequestOutput",
    "SamplingParams",
    "run",
]
