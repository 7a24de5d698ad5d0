"""The serve engine's CPU kernels against the torch formulations they replace.

1. Projection GEMMs of one decode step of SmolLM2-135M's shapes (30 layers of fused q/k/v,
   o_proj, fused gate/up, down, then the LM head; distinct weights per layer, so they come
   from memory as in the engine): `F.linear` (MKL), oneDNN on pre-packed weights, and the
   packed kernel, at several row counts.
2. Decode attention of 30 layers over a paged cache (random block tables, lengths between
   T/2 and T): gather + masked SDPA vs the C++ paged kernel.

3. (`--dtypes`) The same projections in each engine dtype: fp32 packed kernel, bf16 oneDNN,
   the packed int8 kernel and torch's weight-only int8 (`torch._weight_int8pack_mm`), at
   1-64 rows; this is where gemm.INT8_ROWS comes from.
Outputs are compared before timing; contenders alternate, medians of rounds.

    python benchmarks/serve_kernels.py [--threads 1] [--repeats 5] [--dtypes] [--only-dtypes]

Summary keys: packed_vs_linear_rows{M} and onednn_vs_linear_rows{M} (speed-ups of a step's
projections), attention_kernel_vs_torch_b{B} (speed-up of a step's decode attention), and
the memory-bandwidth floor of each (weights or KV bytes / measured read bandwidth).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from minirepro.core.bench import BenchReport, ratio, time_contenders
from minirepro.papers.serve import gemm
from minirepro.papers.serve.paged_attention import attend_paged, paged_decode_attention

LAYERS = 30
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # (N, K) of one layer
LM_HEAD = (49152, 576)


def read_bandwidth() -> float:
    """Bytes/s of summing a 256 MB tensor (best of 3)."""
    a = torch.randn(64 << 20)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    return a.numel() * 4 / best


def gemm_cases(rows: list[int], repeats: int, report: BenchReport, summary: dict, bw: float):
    g = torch.Generator().manual_seed(0)
    dense = [[torch.randn(n, k, generator=g) for n, k in SHAPES] for _ in range(LAYERS)]
    dense.append([torch.randn(*LM_HEAD, generator=g)])
    weights = sum(w.numel() for layer in dense for w in layer) * 4
    packed = {
        kind: [[gemm.pack(w, kind) for w in layer] for layer in dense]
        for kind in ("onednn", "packed")
    }
    for M in rows:
        xs = {k: torch.randn(M, k, generator=g) for k in (576, 1536)}
        for layers in packed.values():  # correctness first
            w, p = dense[0][2], layers[0][2]
            torch.testing.assert_close(
                gemm.linear(xs[576], p), F.linear(xs[576], w), atol=1e-3, rtol=1e-4
            )

        def run_linear(xs=xs):
            for layer in dense:
                for w in layer:
                    F.linear(xs[w.shape[1]], w)

        def runner(kind, xs=xs):
            def run():
                for layer, dl in zip(packed[kind], dense):
                    for p, w in zip(layer, dl):
                        gemm.linear(xs[w.shape[1]], p)

            return run

        t = time_contenders(
            {"F.linear": run_linear, "onednn": runner("onednn"), "packed": runner("packed")},
            warmup=1,
            repeats=repeats,
        )
        flops = 2 * M * weights / 4
        for name, timing in t.items():
            report.add_case(
                part="projections of a decode step",
                impl=name,
                rows=M,
                ms=timing.median * 1e3,
                gflops=flops / timing.median / 1e9,
                floor_ms=weights / bw * 1e3,
            )
        summary[f"packed_vs_linear_rows{M}"] = ratio(t["F.linear"], t["packed"])
        summary[f"onednn_vs_linear_rows{M}"] = ratio(t["F.linear"], t["onednn"])


def dtype_cases(rows: list[int], repeats: int, report: BenchReport, summary: dict):
    """Projections of a decode step in fp32 / bf16 / int8 (engine weight layouts)."""
    from minirepro.papers.serve import dtypes

    g = torch.Generator().manual_seed(2)
    dense = [torch.randn(n, k, generator=g) / 30 for _ in range(LAYERS) for n, k in SHAPES]
    dense.append(torch.randn(*LM_HEAD, generator=g) / 30)
    packs = {
        "fp32 packed": [gemm.pack(w, "packed") for w in dense],
        "bf16 onednn": [gemm.pack(w, "onednn", "bfloat16") for w in dense],
        "int8 kernel": [gemm.pack(w, "onednn", "int8") for w in dense],
    }
    qs = [dtypes.quantize_int8(w) for w in dense]
    torch_int8 = [(q, s.bfloat16()) for q, s in qs]
    for M in rows:
        xs = {k: torch.randn(M, k, generator=g) for k in (576, 1536)}
        xb = {k: x.bfloat16() for k, x in xs.items()}
        y = gemm.linear(xb[576], packs["int8 kernel"][2]).float()  # correctness first
        ref = F.linear(xb[576].float(), dtypes.dequantize_int8(*qs[2]))
        torch.testing.assert_close(y, ref, atol=2e-2, rtol=2e-2)

        def runner(name, xs=xs, xb=xb):
            x = xs if name == "fp32 packed" else xb
            ps = packs[name]
            return lambda: [gemm.linear(x[w.shape[1]], p) for p, w in zip(ps, dense)]

        contenders = {name: runner(name) for name in packs}
        if M <= 16:  # dequantises all weights per call: far slower from a few rows on
            contenders["torch int8"] = lambda xb=xb: [
                torch._weight_int8pack_mm(xb[w.shape[1]], q, s)
                for (q, s), w in zip(torch_int8, dense)
            ]
        t = time_contenders(contenders, warmup=1, repeats=repeats)
        for name, timing in t.items():
            report.add_case(part="projections by dtype", impl=name, rows=M, ms=timing.median * 1e3)
        summary[f"int8_vs_bf16_rows{M}"] = ratio(t["bf16 onednn"], t["int8 kernel"])
        summary[f"bf16_vs_fp32_rows{M}"] = ratio(t["fp32 packed"], t["bf16 onednn"])


def attention_cases(batches: list[int], T: int, repeats: int, report, summary, bw: float):
    Hkv, G, D, bs = 3, 3, 64, 16
    nb = -(-T // bs)
    num_blocks = max(batches) * nb
    g = torch.Generator().manual_seed(1)
    k = [torch.randn(num_blocks, bs, Hkv, D, generator=g) for _ in range(LAYERS)]
    v = [torch.randn(num_blocks, bs, Hkv, D, generator=g) for _ in range(LAYERS)]
    for B in batches:
        tables = torch.randperm(num_blocks, generator=g)[: B * nb].view(B, nb)
        lens = torch.randint(T // 2, T + 1, (B,), generator=g)
        q = torch.randn(B, Hkv * G, D, generator=g)
        a = paged_decode_attention(q, k[0], v[0], tables, lens, backend="kernel")
        b = paged_decode_attention(q, k[0], v[0], tables, lens, backend="torch")
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

        def step(use_kernel, q=q, tables=tables, lens=lens):  # as the engine calls it
            return lambda: [
                attend_paged(q, k[i], v[i], tables, lens, use_kernel) for i in range(LAYERS)
            ]

        t = time_contenders({"torch": step(False), "kernel": step(True)}, warmup=1, repeats=repeats)
        kv_bytes = 2 * LAYERS * int(lens.sum()) * Hkv * D * 4
        for name, timing in t.items():
            report.add_case(
                part="decode attention of a step",
                impl=name,
                rows=B,
                context=T,
                ms=timing.median * 1e3,
                floor_ms=kv_bytes / bw * 1e3,
            )
        summary[f"attention_kernel_vs_torch_b{B}"] = ratio(t["torch"], t["kernel"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--context", type=int, default=400)
    p.add_argument("--out", default="runs/bench/serve_kernels.json")
    p.add_argument("--dtypes", action="store_true", help="also the projections by dtype")
    p.add_argument("--only-dtypes", action="store_true", help="only the projections by dtype")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if gemm.resolve_gemm("auto", torch.zeros(1)) != "packed":
        raise SystemExit("the serve kernels do not build here (no C++ compiler?)")
    report = BenchReport("serve_kernels")
    bw = read_bandwidth()
    summary: dict = {}
    if not args.only_dtypes:
        gemm_cases([1, 4, 16, 32, 64, 256], args.repeats, report, summary, bw)
        attention_cases([8, 32, 64], args.context, args.repeats, report, summary, bw)
    if args.dtypes or args.only_dtypes:
        dtype_cases([1, 2, 4, 8, 16, 32, 64], args.repeats, report, summary)
    report.set_summary(**summary, read_gb_s=bw / 1e9, threads=torch.get_num_threads())
    report.emit(args.out)


if __name__ == "__main__":
    main()
