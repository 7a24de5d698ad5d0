"""Serving throughput on 2 CPU cores: our engine vs HF transformers `generate`.

Workload: 64 seeded requests, prompts of 16-512 random tokens, outputs of 16-256 tokens
(ignore_eos, so every contender produces exactly the same number of tokens), SmolLM2-135M
(fp32). Contenders:
- engine: `LLMEngine.generate` (continuous batching, paged KV, chunked prefill);
- hf_static: HF `generate`, static left-padded batches of 16 in arrival order (each batch
  runs until its longest request ends; only the requested tokens count);
- hf_sequential: HF `generate`, one request at a time, on a random subset of the same
  requests (`--seq-requests`): output tokens/s is a rate, so a subset drawn from the same
  distribution measures the same thing at a fraction of the time.
Correctness first: greedy tokens of 3 requests (12 tokens each) equal HF's, and the static
batches' tokens are compared with the engine's. Contenders alternate within each round
(engine, static, sequential, engine, ...); medians over rounds, ratios from the same run.

Also: the optimal throughput of this machine (measured peak matmul FLOP/s / (2 x params)),
and the second-turn time-to-first-token of a ~400-token conversation with its KV restored
from the offload cache vs re-prefilled (prefix caching off in both).

    python benchmarks/serve.py                        # 64 requests, 16 sequential, 1 round
    python benchmarks/serve.py --quick                # 32 requests, 4 sequential
    python benchmarks/serve.py --threads 1            # when other jobs share the cores

Summary keys: throughput_vs_hf_sequential, throughput_vs_hf_static_batch,
fraction_of_optimal ((prompt + output) tok/s / optimal, the paper's accounting),
output_fraction_of_optimal (output tok/s / optimal), offload_ttft_speedup,
engine_output_tok_s and engine_prompt_plus_output_tok_s; and the
same ratios per second of this process's CPU time (`*_cpu_time`): on a machine shared with
other jobs, wall time includes theirs, CPU time does not (with --threads 1 it is exact up
to cache and memory-bandwidth interference).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch

from minirepro.core.bench import BenchReport
from minirepro.papers.serve import repro


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--seq-requests", type=int, default=16, help="requests HF runs one at a time")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--static-batch", type=int, default=16)
    p.add_argument("--model", default="smollm2", choices=["smollm2", "random"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--offload-reps", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="32 requests, 4 sequential")
    p.add_argument("--out", default="runs/bench/serve.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = dataclasses.replace(
        repro.PRESETS["full"],
        model=args.model,
        num_requests=32 if args.quick else args.requests,
        seq_requests=4 if args.quick else args.seq_requests,
        rounds=args.rounds,
        static_batch=args.static_batch,
        offload_reps=args.offload_reps,
        num_blocks=2048,
    )
    t0 = time.perf_counter()
    model, hf, tok = repro.load_models(cfg)
    load_s = time.perf_counter() - t0
    thr = repro.throughput(model, hf, cfg, None, tok, progress=_progress)
    if thr["greedy_match_hf"] < 1:
        raise SystemExit(
            f"engine tokens differ from HF generate: {thr['greedy_match_hf']:.0%} equal"
        )
    opt, peak = repro.optimal_tok_s(model)
    _progress(f"optimal {opt:.0f} tok/s (peak {peak / 1e9:.0f} GFLOP/s)")
    off = repro.measure_offload(model, cfg, tok)
    report = BenchReport("serve")
    common = dict(requests=cfg.num_requests, output_tokens=thr["output_tokens"])
    report.add_case(impl="engine", tok_s=thr["engine_tok_s"], **common)
    report.add_case(
        impl=f"hf_static_{cfg.static_batch}",
        tok_s=thr["hf_static_tok_s"],
        **common,
        tokens_equal_engine=thr["static_batch_match"],
    )
    report.add_case(
        impl="hf_sequential", tok_s=thr["hf_sequential_tok_s"], requests_measured=cfg.seq_requests
    )
    report.add_case(impl="optimal (peak / 2P)", tok_s=opt, peak_gflops=peak / 1e9)
    report.add_case(impl="ttft re-prefill", ms=off["ttft_reprefill_s"] * 1e3)
    report.add_case(
        impl="ttft restored",
        ms=off["ttft_restored_s"] * 1e3,
        tokens_equal=off["offload_same_tokens"],
    )
    report.set_summary(
        throughput_vs_hf_sequential=thr["vs_hf_sequential"],
        throughput_vs_hf_static_batch=thr["vs_hf_static"],
        fraction_of_optimal=thr["engine_total_tok_s"] / opt,
        output_fraction_of_optimal=thr["engine_tok_s"] / opt,
        fraction_of_optimal_cpu_time=thr["engine_total_tok_cpu_s"] / opt,
        throughput_vs_hf_sequential_cpu_time=thr["vs_hf_sequential_cpu"],
        throughput_vs_hf_static_batch_cpu_time=thr["vs_hf_static_cpu"],
        offload_ttft_speedup=off["offload_ttft_speedup"],
        engine_output_tok_s=thr["engine_tok_s"],
        engine_prompt_plus_output_tok_s=thr["engine_total_tok_s"],
        optimal_tok_s=opt,
        model=cfg.model,
        threads=torch.get_num_threads(),
        load_s=load_s,
        note="hf_sequential is a rate measured on a subset of the same workload",
    )
    report.emit(args.out)


def _progress(text: str) -> None:
    print(f"[serve] {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
