"""An analytic roofline model of LLaMA-2-70B, TP=8 on A100s (a model, not a measurement)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from minirepro.papers.serve.nanobatch.costs import GPU_LAYER_STAGES, Curve, OpCosts


@dataclass(frozen=True)
class GPUSpec:
    """An analytic device model (numbers of the order of an A100-80GB node; assumptions).

    Attributes:
        peak_flops: Dense fp16 tensor-core FLOP/s per GPU (A100: 312e12).
        mem_bw: HBM bytes/s per GPU (A100 80GB: ~2.0e12).
        net_bw: Achievable NVLink bus bandwidth per GPU for collectives, bytes/s.
        gemm_eff: GEMM efficiency at large sizes; `gemm_half` tokens give half of it.
        launch: Seconds of fixed cost per kernel.
    """

    peak_flops: float = 312e12
    mem_bw: float = 2.0e12
    net_bw: float = 240e9
    gemm_eff: float = 0.85
    gemm_half: float = 96.0
    attn_eff: float = 0.8
    launch: float = 8e-6


def paper_costs(
    spec: GPUSpec = GPUSpec(),
    *,
    n_gpu: int = 8,
    n_layer: int = 80,
    d_model: int = 8192,
    d_ff: int = 28672,
    n_kv_head: int = 8,
    head_dim: int = 128,
    vocab_size: int = 32000,
    bytes_per: int = 2,
) -> OpCosts:
    """Roofline cost model of LLaMA-2-70B, tensor-parallel on 8 A100s (the paper's setting).

    GEMMs are compute-bound at an efficiency that drops for small batches; decode attention
    is bound by reading the KV cache; all-gather / all-reduce by NVLink bandwidth (ring).
    Co-running ops slow each other (assumed factors, in the range the paper's interference
    profiling reports qualitatively). A model, not a measurement.
    """
    grid = [1, 16, 64, 128, 256, 512, 768, 1024, 1536, 2048, 4096]
    kv_dim = n_kv_head * head_dim

    def gemm(weights: float) -> Curve:
        ys = [
            spec.launch
            + 2 * weights / n_gpu * n / (spec.peak_flops * spec.gemm_eff * n / (n + spec.gemm_half))
            for n in grid
        ]
        return Curve(grid, ys)

    def net(factor: float) -> Curve:
        nbytes = [n * d_model * bytes_per for n in grid]
        return Curve(
            grid, [spec.launch * 2 + factor * (n_gpu - 1) / n_gpu * b / spec.net_bw for b in nbytes]
        )

    kv_grid = [1.0, 1e3, 1e5, 1e6, 1e7]
    pair_grid = [1.0, 1e4, 1e6, 1e7, 1e8]
    curves = {
        "qkv": gemm(d_model * (d_model + 2 * kv_dim)),
        "o_proj": gemm(d_model * d_model),
        "mlp": gemm(3 * d_model * d_ff),
        "lm_head": gemm(d_model * vocab_size),
        "attn_decode": Curve(
            kv_grid,
            [
                spec.launch + x * 2 * kv_dim * bytes_per / n_gpu / (spec.mem_bw * spec.attn_eff)
                for x in kv_grid
            ],
        ),
        "attn_prefill": Curve(
            pair_grid,
            [spec.launch + x * 4 * d_model / n_gpu / (spec.peak_flops * 0.5) for x in pair_grid],
        ),
        "allgather": net(1.0),
        "allreduce": net(2.0),
    }
    resources = {
        "qkv": "compute",
        "o_proj": "compute",
        "mlp": "compute",
        "lm_head": "compute",
        "attn_prefill": "compute",
        "attn_decode": "memory",
        "allgather": "network",
        "allreduce": "network",
        "sample": "host",
        "detok": "host",
        "schedule": "host",
        "offload": "host",
    }
    interference = {
        "compute": {"memory": 1.25, "network": 1.1},
        "memory": {"compute": 1.4, "network": 1.05},
        "network": {"compute": 1.2, "memory": 1.05},
    }
    params = n_layer * (d_model * (d_model + 2 * kv_dim) + d_model * d_model + 3 * d_model * d_ff)
    params += 2 * vocab_size * d_model
    return OpCosts(
        device="gpu-model",
        n_layer=n_layer,
        curves=curves,
        resources=resources,
        interference=interference,
        layer_stages=GPU_LAYER_STAGES,
        meta={
            "model": "LLaMA-2-70B (analytic)",
            "gpus": n_gpu,
            "spec": dataclasses.asdict(spec),
            "params": params,
            "optimal_tok_s": n_gpu * spec.peak_flops / (2 * params),
            "note": "roofline model with assumed efficiencies and interference; not measured",
        },
    )
