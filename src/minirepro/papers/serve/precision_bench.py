"""The engine in fp32, bf16 and int8 against llama.cpp on the SmolLM2 GGUF: the measurement
behind `benchmarks/serve.py --dtypes ...` (the contenders are in contenders.py).

Two workloads, contenders alternated within each round, medians over rounds:
- batched: the throughput workload (`repro.make_workload`: 64 requests of 16-512 prompt and
  16-256 output tokens, all arriving at t = 0): output tok/s, prompt + output tok/s, median
  time to first token;
- single stream: one request alone (a `single_prompt`-token prompt, `single_tokens` output
  tokens; a fresh random prompt each round): decode tok/s after the first token, and TTFT.

Each engine is built (weights packed, int8 quantized) outside the clocks and warmed up; its
prefix cache is emptied before every timed run, so no contender reuses an earlier run's KV.
`fraction_of_optimal` of a dtype divides its prompt + output tok/s by the optimum of the
arithmetic it multiplies in (`repro.optimal_tok_s(dtype=...)`: fp32 or bf16 peak / 2P).
"""

from __future__ import annotations

import gc
import random
import statistics
from collections.abc import Callable

import torch

from minirepro.papers.serve import contenders as C
from minirepro.papers.serve import repro


def _engine(model, tokenizer, cfg: repro.Config, dtype: str):
    from minirepro.papers.serve.engine import LLMEngine

    engine = LLMEngine(model, tokenizer, repro.engine_config(cfg, dtype=dtype))
    engine.generate([[5, 6, 7, 8] * 8] * 4, repro.greedy(4))  # warm-up: threads, oneDNN
    return engine


def compare(
    model,
    tokenizer,
    cfg: repro.Config,
    dtypes: list[str],
    gguf: str | None,
    single_prompt: int = 400,
    single_tokens: int = 128,
    single_reps: int = 3,
    say: Callable[[str], None] = print,
) -> dict:
    """Batched figures of each dtype and of llama.cpp (if `gguf` and llama-cpp-python are
    there), alternated over `cfg.rounds` rounds, then single-stream ones over `single_reps`."""
    wl = repro.throughput_workload(model, cfg, tokenizer)
    engines = {d: _engine(model, tokenizer, cfg, d) for d in dtypes}
    names = {d: engines[d].dtype for d in dtypes}  # what actually ran (fallback)
    llama = None
    why = C.llama_cpp_available() if gguf else "no GGUF file given"
    if why is None:
        llama = C.LlamaCpp(gguf, n_threads=torch.get_num_threads())
        llama.generate([5, 6, 7, 8] * 8, 4)  # warm-up
        say(f"llama.cpp {llama.version}: {llama.system_info}")
    else:
        say(f"llama.cpp skipped: {why}")
    runners = {f"engine_{d}": d for d in dtypes} | ({"llama_cpp": None} if llama else {})
    batched: dict[str, list[C.Timing]] = {k: [] for k in runners}
    single: dict[str, list[dict]] = {k: [] for k in runners}
    rng = random.Random(cfg.seed + 7)
    for r in range(single_reps):
        prompt = [rng.randrange(2, model.cfg.vocab_size) for _ in range(single_prompt)]
        for name, d in runners.items():
            if d is None:
                s = C.single_stream(C.llama_single(llama), prompt, single_tokens)
            else:
                engines[d].blocks.reset_prefix_cache()
                s = C.single_stream(C.engine_single(engines[d]), prompt, single_tokens)
            single[name].append(s)
            say(
                f"single stream {r}: {name}: decode {s['decode_tok_s']:.1f} tok/s, TTFT "
                f"{s['ttft_s'] * 1e3:.0f} ms ({single_prompt}-token prompt)"
            )
    for r in range(cfg.rounds):
        for name, d in runners.items():
            if d is None:
                t = llama.run(wl.prompts, wl.output_lens)
            else:
                engines[d].blocks.reset_prefix_cache()
                t = C.run_engine_timed(engines[d], wl.prompts, wl.output_lens)
            batched[name].append(t)
            say(
                f"round {r}: {name}: {t.output_tok_s:.1f} output tok/s, {t.total_tok_s:.1f} "
                f"total, TTFT median {t.ttft_median_s:.2f} s"
            )
            gc.collect()
    for e in engines.values():
        e.close()
    if llama is not None:
        llama.close()
    out: dict = {"contenders": {}, "ran_as": names, "llama_cpp": None, "skipped": why}
    ref = batched[f"engine_{dtypes[0]}"][0].outputs
    for name in runners:
        ts, ss = batched[name], single[name]
        first = ts[0].outputs
        out["contenders"][name] = {
            "output_tok_s": statistics.median(t.output_tok_s for t in ts),
            "total_tok_s": statistics.median(t.total_tok_s for t in ts),
            "ttft_median_s": statistics.median(t.ttft_median_s for t in ts),
            "single_decode_tok_s": statistics.median(s["decode_tok_s"] for s in ss),
            "single_ttft_s": statistics.median(s["ttft_s"] for s in ss),
            "single_prefill_tok_s": statistics.median(s["prefill_tok_s"] for s in ss),
            # share of requests whose tokens equal the first dtype's (16 first tokens)
            "same_16_as_first": sum(a[:16] == b[:16] for a, b in zip(first, ref)) / len(ref),
        }
    if llama is not None:
        out["llama_cpp"] = {"version": llama.version, "system_info": llama.system_info}
    out["requests"], out["prompt_tokens"] = len(wl.prompts), wl.prompt_tokens
    out["output_tokens"] = wl.output_tokens
    return out
