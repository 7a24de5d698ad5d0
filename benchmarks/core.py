"""Core benchmarks: fp32 vs bf16 training steps, and our `generate` vs HF `generate`.

Training (``--what train``): the core trainer (`minirepro.core.train.train`) on the core
decoder at three sizes, ``precision="fp32"`` against ``precision="bf16"``. Both start from the
same weights; their first-step losses are compared before timing; then calls of a few steps
each are alternated (fp32, bf16, fp32, ...) and the medians, and the median of the per-round
ratios, reported. ``--sweep`` times many widths instead (the measurement behind
`minirepro.core.precision.AUTO_BF16_MIN_WIDTH`).

Generation (``--what generate``): our KV-cache `generate` vs HF transformers' `generate` on
SmolLM2-135M. Same weights (both read the same GGUF), same prompt, greedy, batch 1, the
same number of new tokens (EOS ignored); checked to produce the same tokens, then timed in
alternation. Also the machine's peak matmul FLOP/s and the compute-bound optimum
2·params FLOP/token it implies, for scale.

    python benchmarks/core.py [--what all|train|generate] [--repeats 5] [--new-tokens 64]
    python benchmarks/core.py --what train --sweep 32,64,128,192,256,384
"""

from __future__ import annotations

import argparse
import copy
import functools
from dataclasses import replace

import torch

from minirepro.core.bench import (
    BenchReport,
    paired_ratio,
    peak_matmul_flops,
    ratio,
    time_contenders,
)
from minirepro.core.model import ModelConfig, Transformer
from minirepro.core.precision import cpu_features, linear_width, resolve_precision
from minirepro.core.train import TrainConfig, train

PROMPT = "Explain in two sentences why the sky is blue."
# (d_model, n_layer): the small models papers train here, the 4-layer d=256 and a
# 6-layer d=384 (the size of the second measurement).
TRAIN_SIZES = ((64, 2), (256, 4), (384, 6))


def _model(d_model: int, n_layer: int, vocab: int, seq_len: int) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=vocab,
        n_layer=n_layer,
        n_head=max(2, d_model // 64),
        d_model=d_model,
        max_seq_len=seq_len,
    )
    return Transformer(cfg)


def bench_train(report: BenchReport, sizes, *, batch: int, seq_len: int, steps: int,
                repeats: int, vocab: int = 256) -> list[dict]:  # fmt: skip
    """Times `train` in fp32 and bf16 for each (d_model, n_layer); adds rows to `report`."""

    def get_batch(step: int, g: torch.Generator):
        x = torch.randint(0, vocab, (batch, seq_len + 1), generator=g)
        return x[:, :-1], x[:, 1:]  # (B, S) inputs, (B, S) next-token targets

    rows = []
    for d_model, n_layer in sizes:
        base = _model(d_model, n_layer, vocab, seq_len)
        models = {p: copy.deepcopy(base) for p in ("fp32", "bf16")}
        cfgs = {
            p: TrainConfig(steps=steps, lr=1e-3, warmup_steps=1, batch_size=batch,
                           log_every=steps, precision=p)
            for p in models
        }  # fmt: skip
        first = {
            p: train(copy.deepcopy(base), replace(cfgs[p], steps=1), get_batch) for p in models
        }
        loss_gap = abs(first["fp32"].history[0]["loss"] - first["bf16"].history[0]["loss"])
        ran = {p: s.precision for p, s in first.items()}
        if ran["bf16"] != "bf16":
            raise SystemExit(f"bf16 fell back to fp32 on this CPU ({cpu_features().describe()})")
        fns = {p: functools.partial(train, models[p], cfgs[p], get_batch) for p in models}
        times = time_contenders(fns, warmup=1, repeats=repeats)
        row = {
            "d_model": d_model,
            "n_layer": n_layer,
            "params": base.num_params(),
            "linear_width": linear_width(base),
            "tokens_per_step": batch * seq_len,
            "fp32_step_ms": times["fp32"].median / steps * 1e3,
            "bf16_step_ms": times["bf16"].median / steps * 1e3,
            "bf16_over_fp32": paired_ratio(times["bf16"], times["fp32"]),
            "first_loss_gap": loss_gap,
            "auto": resolve_precision("auto", base),
        }
        row["auto_is_faster"] = (row["auto"] == "bf16") == (row["bf16_over_fp32"] < 1.0)
        report.add_case(kind="train", **row)
        rows.append(row)
        print(
            f"d={d_model} L={n_layer}: fp32 {row['fp32_step_ms']:.1f} ms, "
            f"bf16 {row['bf16_step_ms']:.1f} ms, bf16/fp32 {row['bf16_over_fp32']:.3f}",
            flush=True,
        )
    return rows


def bench_generate(report: BenchReport, *, new_tokens: int, repeats: int) -> None:
    """Times our `generate` against HF `generate` on SmolLM2; adds rows and a summary."""
    from minirepro.core.generate import generate
    from minirepro.core.pretrained import load_hf_smollm2, load_smollm2

    ours = load_smollm2()
    hf = load_hf_smollm2()
    ids = ours.encode_chat([{"role": "user", "content": PROMPT}])
    x = torch.tensor([ids])
    n = new_tokens

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

    times = time_contenders({"ours": run_ours, "hf_generate": run_hf}, warmup=1, repeats=repeats)
    start = len(report.cases)
    report.add_timings(
        times, baseline="hf_generate", kind="generate", prompt_tokens=len(ids), new_tokens=n,
        batch=1,
    )  # fmt: skip
    for row in report.cases[start:]:
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--what", choices=("all", "train", "generate"), default="all")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="training batch (sequences)")
    parser.add_argument("--seq-len", type=int, default=128, help="training sequence length")
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed call")
    parser.add_argument(
        "--sweep",
        default="",
        help="comma-separated widths: time 2-layer decoders of these d_model instead",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", default=None, help="also write the JSON document here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    report = BenchReport("core")
    if args.what in ("all", "train"):
        feats = cpu_features()
        sizes = [(int(d), 2) for d in args.sweep.split(",")] if args.sweep else TRAIN_SIZES
        if not feats.native_bf16:
            print(f"no native bf16 on this CPU ({feats.describe()}): training not timed")
        else:
            rows = bench_train(report, sizes, batch=args.batch, seq_len=args.seq_len,
                               steps=args.steps, repeats=args.repeats)  # fmt: skip
            report.set_summary(
                cpu_features=feats.describe(),
                **{f"bf16_over_fp32_d{r['d_model']}_L{r['n_layer']}": r["bf16_over_fp32"]
                   for r in rows},
                auto_picks_faster_everywhere=all(r["auto_is_faster"] for r in rows),
            )  # fmt: skip
    if args.what in ("all", "generate"):
        bench_generate(report, new_tokens=args.new_tokens, repeats=args.repeats)
    return report.emit(args.out)


if __name__ == "__main__":
    main()
