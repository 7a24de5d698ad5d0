"""Core benchmark: our KV-cache `generate` vs HF transformers `generate` on SmolLM2-135M.

Same weights (both read the same GGUF), same prompt, greedy, batch 1, the same number of new
tokens (EOS ignored). The two are checked to produce the same tokens before timing, then
timed in alternation. Also the machine's peak matmul FLOP/s and the compute-bound optimum
2·params FLOP/token it implies, for scale.

    python benchmarks/core.py [--new-tokens 64] [--repeats 5]
"""

from __future__ import annotations

import argparse

import torch

from minirepro.core.bench import BenchReport, peak_matmul_flops, ratio, time_contenders
from minirepro.core.generate import generate
from minirepro.core.pretrained import load_hf_smollm2, load_smollm2

PROMPT = "Explain in two sentences why the sky is blue."


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    ours = load_smollm2()
    hf = load_hf_smollm2()
    ids = ours.encode_chat([{"role": "user", "content": PROMPT}])
    x = torch.tensor([ids])
    n = args.new_tokens

    def run_ours() -> list[int]:
        return generate(ours.model, ids, max_new_tokens=n)[0]

    @torch.inference_mode()
    def run_hf() -> list[int]:
        out = hf.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=2,
        )
        return out[0, len(ids) :].tolist()

    same = run_ours() == run_hf()
    if not same:
        raise SystemExit("our greedy tokens differ from HF generate's: fix that before timing")

    times = time_contenders(
        {"ours": run_ours, "hf_generate": run_hf}, warmup=1, repeats=args.repeats
    )
    report = BenchReport("core")
    report.add_timings(times, baseline="hf_generate", prompt_tokens=len(ids), new_tokens=n, batch=1)
    for row in report.cases:
        row["tokens_per_s"] = n / (row["median_ms"] / 1e3)
    flops = peak_matmul_flops()
    params = ours.model.num_params()
    report.set_summary(
        generate_tokens_per_s=n / times["ours"].median,
        hf_generate_tokens_per_s=n / times["hf_generate"].median,
        generate_vs_hf=ratio(times["hf_generate"], times["ours"]),
        tokens_identical=same,
        peak_matmul_gflops=flops / 1e9,
        compute_bound_tokens_per_s=flops / (2 * params),
        params=params,
    )
    return report.emit()


if __name__ == "__main__":
    main()
