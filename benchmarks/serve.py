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
    python benchmarks/serve.py --skip-hf              # only the dtypes and llama.cpp

Precision and llama.cpp (papers/serve/precision_bench.py): on the same workload and on a
single stream (a 400-token prompt, 128 output tokens), output tok/s, total tok/s and time to
first token of the engine in each `--dtypes` entry and of llama.cpp (llama-cpp-python on the
same GGUF, one request at a time; skipped with a line saying why when llama_cpp is not
installed -- `make bench` builds it). fraction_of_optimal_<dtype> divides prompt + output
tok/s by the optimum of that dtype's arithmetic (bf16 peak for bfloat16 and int8).

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
    p.add_argument("--dtypes", default="float32,bfloat16,int8", help="'' to skip")
    p.add_argument("--skip-hf", action="store_true", help="skip HF and the offload TTFT")
    p.add_argument("--single-prompt", type=int, default=400)
    p.add_argument("--single-tokens", type=int, default=128)
    p.add_argument("--single-reps", type=int, default=3)
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
    report = BenchReport("serve")
    summary: dict = {}
    if args.dtypes:
        summary |= _precision(report, model, tok, cfg, args)
    if args.skip_hf:
        report.set_summary(**summary, threads=torch.get_num_threads(), load_s=load_s)
        report.emit(args.out)
        return
    thr = repro.throughput(model, hf, cfg, None, tok, progress=_progress)
    if thr["greedy_match_hf"] < 1:
        raise SystemExit(
            f"engine tokens differ from HF generate: {thr['greedy_match_hf']:.0%} equal"
        )
    opt, peak = repro.optimal_tok_s(model)
    _progress(f"optimal {opt:.0f} tok/s (peak {peak / 1e9:.0f} GFLOP/s)")
    off = repro.measure_offload(model, cfg, tok)
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
        **summary,
    )
    report.emit(args.out)


def _precision(report: BenchReport, model, tok, cfg, args) -> dict:
    """The dtypes vs llama.cpp cases; returns their summary keys."""
    from minirepro.core.pretrained import find_gguf
    from minirepro.papers.serve import precision_bench

    dtypes = args.dtypes.split(",")
    gguf = str(find_gguf()) if args.model == "smollm2" else None
    res = precision_bench.compare(
        model,
        tok,
        cfg,
        dtypes,
        gguf,
        args.single_prompt,
        args.single_tokens,
        args.single_reps,
        say=_progress,
    )
    out: dict = {}
    peaks: dict[str, float] = {}
    for d in dtypes:
        ran = res["ran_as"][d]
        key = "float32" if ran == "float32" else "bfloat16"
        if key not in peaks:
            peaks[key] = repro.optimal_tok_s(model, cfg.peak_sizes, ran)[1]
            _progress(f"peak {key} matmul {peaks[key] / 1e9:.0f} GFLOP/s")
        opt = peaks[key] / (2 * model.num_params())
        c = res["contenders"][f"engine_{d}"]
        out[f"fraction_of_optimal_{d}"] = c["total_tok_s"] / opt
        out[f"optimal_tok_s_{d}"] = opt
        if ran != d:
            out[f"{d}_ran_as"] = ran
    for name, c in res["contenders"].items():
        report.add_case(
            impl=f"{name} (batched)",
            tok_s=c["output_tok_s"],
            **{
                "total_tok_s": c["total_tok_s"],
                "ttft_median_s": c["ttft_median_s"],
                "same_16_tokens_as_fp32": c["same_16_as_first"],
            },
        )
        report.add_case(
            impl=f"{name} (single stream)",
            tok_s=c["single_decode_tok_s"],
            ttft_ms=c["single_ttft_s"] * 1e3,
            prefill_tok_s=c["single_prefill_tok_s"],
        )
    eng = {k: v for k, v in res["contenders"].items() if k.startswith("engine_")}
    best = max(eng, key=lambda k: eng[k]["output_tok_s"])
    best_single = max(eng, key=lambda k: eng[k]["single_decode_tok_s"])
    out |= {"best_batched_dtype": best, "best_single_stream_dtype": best_single}
    for k, v in eng.items():
        out[f"{k}_output_tok_s"] = v["output_tok_s"]
        out[f"{k}_single_decode_tok_s"] = v["single_decode_tok_s"]
    lc = res["contenders"].get("llama_cpp")
    if lc is None:
        out["llama_cpp"] = "skipped: " + (res.get("skipped") or "not installed")
    else:
        out["batched_output_vs_llama_cpp"] = eng[best]["output_tok_s"] / lc["output_tok_s"]
        out["batched_total_vs_llama_cpp"] = eng[best]["total_tok_s"] / lc["total_tok_s"]
        out["single_decode_vs_llama_cpp"] = (
            eng[best_single]["single_decode_tok_s"] / lc["single_decode_tok_s"]
        )
        out["single_ttft_vs_llama_cpp"] = eng[best_single]["single_ttft_s"] / lc["single_ttft_s"]
        out["llama_cpp"] = f"llama-cpp-python {res['llama_cpp']['version']}, one request at a time"
        out["llama_cpp_system_info"] = res["llama_cpp"]["system_info"]
    return out


def _progress(text: str) -> None:
    print(f"[serve] {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
