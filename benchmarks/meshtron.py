"""Meshtron's speed and memory claims in one run: hourglass vs flat training, truncated vs
full-sequence training memory, sliding-window (rolling KV cache) vs full-attention generation.

First checks correctness: token-by-token decoding with rolling caches reproduces the
windowed full forward (flexattn's sliding-window mask), and full caches the causal one.
Then, with random weights (speed and memory depend only on shapes):

- training: one forward + backward + AdamW step of the hourglass (layers 1,1,2,1,1) and a
  flat transformer of equal depth (6 layers) on batches of whole meshes of each length,
  alternated (hourglass, flat, hourglass, ...); medians, per-round ratios, tokens/s;
- peak training memory: the growth of resident memory over two steps, each contender in a
  fresh subprocess (`minirepro.papers.meshtron.bench.peak_train_memory`): hourglass vs
  flat on whole meshes, and truncated windows vs whole meshes;
- generation: decoding a fixed number of tokens with the rolling cache (window of
  --window-faces faces) vs full KV caches, alternated, at each length.

    python benchmarks/meshtron.py [--faces 100,300,1000] [--gen-faces 100,300,1000]
        [--batch 2] [--gen-batch 4] [--window-faces 24] [--repeats 3] [--threads 2]
        [--decode-threads 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from minirepro.core.bench import BenchReport, paired_ratio, ratio
from minirepro.core.threads import num_threads
from minirepro.papers.meshtron import HourglassLM, MeshTokenizer, MeshtronConfig
from minirepro.papers.meshtron.bench import (
    generation_timings,
    peak_train_memory,
    random_batch,
    train_timings,
)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def check_decoding(cfg: MeshtronConfig, length: int) -> float:
    """Largest |logit difference| between step-by-step decoding and the full forward."""
    torch.manual_seed(0)
    model = HourglassLM(cfg).eval()
    x = torch.randint(0, cfg.vocab_size - 3, (2, length))
    x[:, 0] = cfg.vocab_size - 3
    pts, nf = torch.rand(2, 64, 3) - 0.5, torch.tensor([50, 200])
    with torch.no_grad():
        full = model(x, pts, nf)
    st = model.new_state(2, length, pts, nf)
    steps = torch.stack([model.step(x[:, i], st) for i in range(length)], 1)
    return float((steps - full).abs().max())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=_ints, default=[100, 300, 1000], help="training lengths")
    parser.add_argument("--gen-faces", type=_ints, default=[100, 300, 1000])
    parser.add_argument("--batch", type=int, default=2, help="training batch (whole meshes)")
    parser.add_argument("--gen-batch", type=int, default=4)
    parser.add_argument("--window-faces", type=int, default=24)
    parser.add_argument("--n-levels", type=int, default=128)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gen-repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="training threads")
    parser.add_argument("--decode-threads", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true", help="skip the subprocesses")
    parser.add_argument("--out", default=None, help="also write the JSON document here")
    args = parser.parse_args(argv)

    tok = MeshTokenizer(args.n_levels)
    window = 9 * args.window_faces
    base = MeshtronConfig(vocab_size=tok.vocab_size, layers=(1, 1, 2, 1, 1), d_model=args.d_model,
                          n_head=4, point_cloud=True, face_bins=8, max_faces=max(args.gen_faces))  # fmt: skip
    flat = dataclasses.replace(base, layers=(6,))
    sliding = dataclasses.replace(base, window=window)
    report = BenchReport("meshtron")

    with num_threads(args.decode_threads):
        err_window = check_decoding(sliding, 4 * window + 11)
        err_full = check_decoding(base, 200)
    if max(err_window, err_full) > 1e-4:
        raise SystemExit(f"decoding check failed: {err_window:.2e} (window), {err_full:.2e}")

    summary: dict = {"decode_check_max_abs": max(err_window, err_full)}
    with num_threads(args.threads):
        for faces in args.faces:
            L = 9 * faces + 1
            torch.manual_seed(0)
            models = {"hourglass": HourglassLM(base), "flat": HourglassLM(flat)}
            batch = random_batch(base, args.batch, L, 256)
            times = train_timings(models, batch, repeats=args.repeats)
            report.add_timings(times, baseline="flat", kind="train step", faces=faces,
                               tokens=batch[0].numel())  # fmt: skip
            for row in report.cases[-2:]:
                row["tokens_per_s"] = batch[0].numel() / (row["median_ms"] / 1e3)
            summary[f"train_speedup_{faces}f"] = paired_ratio(times["flat"], times["hourglass"])
        if not args.no_memory:
            longest = 9 * max(args.faces) + 1
            for name, cfg, L in [("hourglass", base, longest), ("flat", flat, longest),
                                 ("hourglass truncated", base, window + 1)]:  # fmt: skip
                mib = peak_train_memory(cfg, args.batch, L, threads=args.threads)
                report.add_case(kind="peak train memory", impl=name, tokens=args.batch * L,
                                peak_rss_growth_mib=mib)  # fmt: skip
                summary[f"memory_{name.replace(' ', '_')}_mib"] = mib
            mem = summary
            summary["memory_flat_over_hourglass"] = (
                mem["memory_flat_mib"] / mem["memory_hourglass_mib"]
            )
            summary["memory_truncated_cut_pct"] = 100 * (
                1 - mem["memory_hourglass_truncated_mib"] / mem["memory_hourglass_mib"]
            )

    with num_threads(args.decode_threads):
        torch.manual_seed(0)
        slide_model = HourglassLM(sliding)
        full_model = HourglassLM(base)
        full_model.load_state_dict(slide_model.state_dict())
        pts = torch.rand(args.gen_batch, 256, 3) - 0.5
        nf = torch.full((args.gen_batch,), 300)
        for faces in args.gen_faces:
            gt = generation_timings({"sliding window": slide_model, "full attention": full_model},
                                    tok, args.gen_batch, faces, points=pts, n_faces=nf,
                                    repeats=args.gen_repeats)  # fmt: skip
            n = args.gen_batch * 9 * faces
            report.add_timings(gt, baseline="full attention", kind="generate", faces=faces,
                               tokens=n, window=window)  # fmt: skip
            for row in report.cases[-2:]:
                row["tokens_per_s"] = n / (row["median_ms"] / 1e3)
            summary[f"generation_speedup_{faces}f"] = ratio(
                gt["full attention"], gt["sliding window"]
            )
    summary.update(threads=args.threads, decode_threads=args.decode_threads, window_tokens=window)
    report.set_summary(**summary)
    return report.emit(args.out)


if __name__ == "__main__":
    main()
