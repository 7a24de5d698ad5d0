"""FlexAttention on the CPU: ours vs dense-mask SDPA vs the compiled reference.

B=1, H=8, D=64, fp32; S in {1024, 2048, 4096, 8192}; causal, sliding window 256, document
(8 docs, causal), prefix LM (S/4). Contenders alternate (A B C A B C ...); medians and
ratios come from one run. Correctness is checked against dense SDPA before timing.

    python benchmarks/flexattn.py                 # the full table (about 15 min, 2 cores)
    python benchmarks/flexattn.py --sizes 1024,2048 --no-reference

The reference compiles into a fresh inductor cache directory (a first call, as a new user
sees it); `--warm-cache` reuses the on-disk cache instead.

The last line is one JSON document; summary keys:
    sw256_s4096_fwd_vs_sdpa, sw256_s4096_fwdbwd_vs_sdpa  (dense-mask SDPA time / ours)
    min_fwd_vs_torch_flex  (min over variants and S >= 2048 of compiled reference / ours)
    first_call_vs_torch_flex  (reference first call incl. compile / our first call, min)
A figure, time vs fraction of blocks computed, is written beside the JSON file.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from minirepro.core.bench import BenchReport, first_call_time, ratio, time_contenders
from minirepro.papers.flexattn import (
    create_block_mask,
    create_mask,
    flex_attention,
    make_causal,
    make_document,
    make_prefix_lm,
    make_sliding_window,
)


def variants(S: int):
    return {
        "causal": make_causal(),
        "sliding_window_256": make_sliding_window(256),
        "document_8": make_document(list(range(0, S + 1, S // 8))),
        "prefix_lm": make_prefix_lm(S // 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1024,2048,4096,8192")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--bwd-max", type=int, default=4096, help="largest S timed fwd+bwd")
    p.add_argument("--no-reference", action="store_true", help="skip torch's flex_attention")
    p.add_argument("--out", default="runs/bench/flexattn.json")
    p.add_argument(
        "--warm-cache",
        action="store_true",
        help="let the reference reuse the on-disk inductor cache (its first call then skips "
        "most of the compile); by default it compiles into a fresh cache directory",
    )
    args = p.parse_args()
    if not args.warm_cache:  # read by inductor when it compiles, so setting it here works
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="flexattn-inductor-")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    sizes = [int(s) for s in args.sizes.split(",")]
    B, H, D = 1, 8, 64
    report = BenchReport("flexattn")
    ref_flex = None
    if not args.no_reference:
        from torch.nn.attention import flex_attention as ref

        ref_flex = torch.compile(ref.flex_attention)
    points = []  # (variant, S, density, ours_ms, sdpa_ms)
    fwd_vs_ref, first_ratios, summary = [], [], {}
    first_seen: set[str] = set()
    for S in sizes:
        g = torch.Generator().manual_seed(S)
        q, k, v = (torch.randn(B, H, S, D, generator=g) for _ in range(3))
        for name, mm in variants(S).items():
            dense = create_mask(mm, 1, 1, S, S)
            t_first_ours = first_call_time(partial(_first_call_ours, q, k, v, mm))
            bm = create_block_mask(mm, None, None, S, S)
            density = 1 - bm.sparsity() / 100
            out = flex_attention(q, k, v, block_mask=bm)
            expect = F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
            err = (out - expect).abs().max().item()
            assert err < 1e-4, f"{name} S={S}: max error {err} vs dense SDPA"
            fns = {
                "ours": partial(flex_attention, q, k, v, block_mask=bm),
                "sdpa_dense_mask": partial(
                    F.scaled_dot_product_attention, q, k, v, attn_mask=dense
                ),
            }
            if name == "causal":
                fns["sdpa_is_causal"] = partial(
                    F.scaled_dot_product_attention, q, k, v, is_causal=True
                )
            row = {}
            if ref_flex is not None:
                from torch.nn.attention.flex_attention import create_block_mask as ref_cbm

                rbm = ref_cbm(mm, None, None, S, S, device="cpu")
                t_first_ref = first_call_time(partial(ref_flex, q, k, v, block_mask=rbm))
                if name not in first_seen:  # compile of a new mask_mod, not a new shape
                    first_seen.add(name)
                    first_ratios.append(t_first_ref / t_first_ours)
                row.update(ref_first_call_s=t_first_ref)
                fns["torch_flex_compiled"] = partial(ref_flex, q, k, v, block_mask=rbm)
            t = time_contenders(fns, warmup=1, repeats=args.repeats)
            vs_sdpa = ratio(t["sdpa_dense_mask"], t["ours"])
            row.update(
                ours_first_call_s=t_first_ours,
                density=density,
                max_err=err,
                fwd_vs_sdpa=vs_sdpa,
            )
            if ref_flex is not None:
                row["fwd_vs_torch_flex"] = ratio(t["torch_flex_compiled"], t["ours"])
                if S >= 2048:
                    fwd_vs_ref.append(row["fwd_vs_torch_flex"])
            report.add_timings(t, baseline="ours", pass_="fwd", variant=name, S=S, **row)
            points.append((name, S, density, t["ours"].median * 1e3, t["sdpa_dense_mask"].median))
            if name == "sliding_window_256" and S == 4096:
                summary["sw256_s4096_fwd_vs_sdpa"] = vs_sdpa
            if S <= args.bwd_max:
                qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
                do = torch.randn(B, H, S, D, generator=g)

                fb_ours = partial(_fwd_bwd, flex_attention, qg, kg, vg, do, block_mask=bm)
                fb_sdpa = partial(
                    _fwd_bwd, F.scaled_dot_product_attention, qg, kg, vg, do, attn_mask=dense
                )

                tb = time_contenders(
                    {"ours": fb_ours, "sdpa_dense_mask": fb_sdpa},
                    warmup=1,
                    repeats=max(3, args.repeats // 2),
                )
                fb = ratio(tb["sdpa_dense_mask"], tb["ours"])
                report.add_timings(
                    tb, baseline="ours", pass_="fwd+bwd", variant=name, S=S, fwdbwd_vs_sdpa=fb
                )
                if name == "sliding_window_256" and S == 4096:
                    summary["sw256_s4096_fwdbwd_vs_sdpa"] = fb
    if fwd_vs_ref:
        summary["min_fwd_vs_torch_flex"] = min(fwd_vs_ref)
        summary["median_fwd_vs_torch_flex"] = sorted(fwd_vs_ref)[len(fwd_vs_ref) // 2]
    if first_ratios:
        summary["first_call_vs_torch_flex"] = min(first_ratios)
    report.set_summary(**summary)
    _figure(points, Path(args.out).with_suffix(".png"))
    report.emit(args.out)


def _first_call_ours(q, k, v, mask_mod):
    """Our first call on a new mask: BlockMask, plan and kernel, nothing cached."""
    S = q.shape[2]
    return flex_attention(q, k, v, block_mask=create_block_mask(mask_mod, None, None, S, S))


def _fwd_bwd(attn, q, k, v, do, **kwargs):
    torch.autograd.grad(attn(q, k, v, **kwargs), (q, k, v), do)


def _figure(points, path: Path) -> None:
    """Our time / dense-SDPA time against the fraction of blocks computed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name in dict.fromkeys(p[0] for p in points):
        xs = [p[2] for p in points if p[0] == name]
        ys = [p[3] / 1e3 / p[4] for p in points if p[0] == name]
        ax.scatter(xs, ys, label=name)
        for x, y, S in zip(xs, ys, [p[1] for p in points if p[0] == name]):
            ax.annotate(str(S), (x, y), fontsize=7)
    grid = [i / 100 for i in range(1, 101)]
    ax.plot(grid, grid, "k--", lw=0.8, label="time = fraction computed")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("fraction of blocks computed (1 - sparsity)")
    ax.set_ylabel("our time / dense-mask SDPA time")
    ax.set_title("FlexAttention CPU forward, B=1 H=8 D=64 fp32")
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
