"""WiM vs full-context prefill: tokens processed and wall time on the real SmolLM2-135M.

One synthetic multi-hop haystack (default 4096 tokens) is answered two ways, greedy:

- full context: the whole context prefilled (chunks of 512), then the question, then the
  answer (`minirepro.papers.wim.full_context`);
- WiM: the same tokens prefilled segment by segment; after each, the extractive
  instruction is prefilled, a margin generated and cropped away, and the margin classified
  in its own cache; then the relevant margins, the question and the answer
  (`minirepro.papers.wim.run_wim`).

First checks correctness: the full-context answer equals the one WiM's session gives from
its own cache after cropping every margin away (this is also the warm-up). Then the two
are alternated (full, WiM, full, ...); medians, the median per-round ratio, and the tokens
each processes (prefilled + generated) are reported, with the time to the first margin. The
paper claims WiM adds little over the prefill; on a CPU, where a generated token costs
about as much as tens of prefilled ones, its margins are what it pays for.

    python benchmarks/wim.py [--tokens 4096] [--segment-tokens 1024] [--margin-tokens 100]
                             [--repeats 3] [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import time

import torch

from minirepro.core.bench import BenchReport, paired_ratio, ratio, time_contenders
from minirepro.core.pretrained import load_smollm2
from minirepro.papers.wim import WiMConfig, WiMSession, as_lm, full_context, run_wim
from minirepro.tasks.haystack import multihop_item


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096, help="haystack length (tokens)")
    parser.add_argument("--segment-tokens", type=int, default=1024)
    parser.add_argument("--margin-tokens", type=int, default=100, help="most tokens per margin")
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", default=None, help="also write the JSON document here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    lm = as_lm(load_smollm2())
    load_s = time.perf_counter() - t0
    item = multihop_item(0, 0, args.tokens, length=lambda t: len(lm.encode(t)))
    cfg = WiMConfig(
        segment_tokens=args.segment_tokens,
        max_margin_tokens=args.margin_tokens,
        max_answer_tokens=args.answer_tokens,
    )

    # correctness: the full-context answer survives WiM's margins and crops
    session = WiMSession(lm, item.context, item.question, cfg)
    for _ in session:
        pass
    shared = session.answer(use_margins=False).answer
    full_once = full_context(lm, item.context, item.question, cfg)
    if shared != full_once.answer:
        raise SystemExit(f"crop check failed: {shared!r} != {full_once.answer!r}")

    outputs: dict[str, object] = {}

    def run_full():
        outputs["full"] = full_context(lm, item.context, item.question, cfg)

    def run_wim_once():
        outputs["wim"] = run_wim(lm, item.context, item.question, cfg)

    times = time_contenders(
        {"full context": run_full, "WiM": run_wim_once}, warmup=0, repeats=args.repeats
    )
    full, wim = outputs["full"], outputs["wim"]
    full_tokens = full.prefill_tokens + full.generated_tokens
    wim_tokens = wim.prefill_tokens + wim.generated_tokens
    report = BenchReport("wim")
    common = dict(context_tokens=sum(len(s) for s in session.segments), segments=wim.n_segments)
    report.add_timings(times, baseline="full context", **common)
    for row, out in zip(report.cases[-2:], (full, wim)):
        row["prefill_tokens"] = out.prefill_tokens
        row["generated_tokens"] = out.generated_tokens
    report.set_summary(
        load_seconds=load_s,
        threads=torch.get_num_threads(),
        tokens_full=full_tokens,
        tokens_wim=wim_tokens,
        tokens_ratio_wim_over_full=wim_tokens / full_tokens,
        generated_full=full.generated_tokens,
        generated_wim=wim.generated_tokens,
        wall_ratio_wim_over_full=ratio(times["WiM"], times["full context"]),
        paired_wall_ratio_wim_over_full=paired_ratio(times["WiM"], times["full context"]),
        wim_time_to_first_margin_s=wim.time_to_first_margin,
        wim_time_to_answer_s=wim.time_to_answer,
        full_time_to_answer_s=times["full context"].median,
        crop_check="passed",
    )
    return report.emit(args.out)


if __name__ == "__main__":
    main()
