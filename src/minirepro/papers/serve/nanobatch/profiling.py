"""Measured op costs of the core `Transformer` on this CPU, as the engine's runner runs them."""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from minirepro.papers.serve.nanobatch.costs import CPU_LAYER_STAGES, Curve, OpCosts


def _time(fn: Callable[[], Any], repeats: int, min_time: float = 0.003) -> float:
    """Seconds of `fn`: the best of `repeats` rounds, each looping to at least `min_time`.

    The best round, not the median: on a machine shared with other jobs a round is only
    ever slowed down, so the fastest is the cost of the op itself.
    """
    fn()
    samples = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            el = time.perf_counter() - t0
            if el >= min_time:
                break
        samples.append(el / n)
    return min(samples)


def _curve(points: Mapping[float, list[float]]) -> Curve:
    xs = sorted(points)
    ys = [statistics.median(points[x]) for x in xs]
    # Costs never fall with size; measured noise can make them dip.
    for i in range(1, len(ys)):
        ys[i] = max(ys[i], ys[i - 1])
    return Curve(xs, ys)


def measure_interference(seconds: float = 0.3) -> dict[str, dict[str, float]]:
    """Measures how compute (torch matmuls) and host work (Python) slow each other down.

    A GEMM loop and a pure-Python loop (the kind of work sampling bookkeeping,
    detokenisation and scheduling do) are timed alone and then at the same time in two
    threads.

    Returns:
        {"compute": {"host": f_c}, "host": {"compute": f_h}}, each factor >= 1.
    """
    import torch

    a, b = torch.randn(256, 576), torch.randn(576, 1536)

    def gemm(n):
        for _ in range(n):
            torch.mm(a, b)

    def py(n):
        s = 0
        for i in range(n):
            s += len(str(i * 7))
        return s

    def rate(fn, n):
        t0 = time.perf_counter()
        fn(n)
        return time.perf_counter() - t0

    ng = max(1, int(seconds / max(rate(gemm, 3) / 3, 1e-6)))
    npy = max(1, int(seconds / max(rate(py, 20000) / 20000, 1e-9)))
    alone_g, alone_p = rate(gemm, ng), rate(py, npy)
    together: dict[str, float] = {}

    def host_thread():
        together["host"] = rate(py, npy)

    th = threading.Thread(target=host_thread)
    th.start()
    together["compute"] = rate(gemm, ng)
    th.join()
    return {
        "compute": {"host": max(1.0, together["compute"] / alone_g)},
        "host": {"compute": max(1.0, together["host"] / alone_p)},
    }


def _norm_rope(block, x, q, k, cos, sin, pool, slots):
    """A layer's element-wise work as the runner does it: norms, RoPE, K/V writes, residual."""
    import torch

    half = q.shape[-1] // 2
    h = block.norm1(x)
    q2 = q * cos + torch.cat([-q[..., half:], q[..., :half]], -1) * sin
    k2 = k * cos + torch.cat([-k[..., half:], k[..., :half]], -1) * sin
    pool.index_copy_(0, slots, k2)
    pool.index_copy_(0, slots, k2)
    return block.norm2(h + x), q2


def _mlp(x, w_gate_up, w_down):
    """SwiGLU with the gate and up projections fused into one GEMM (as the runner)."""
    import torch.nn.functional as F

    from minirepro.papers.serve.gemm import linear

    gate, up = linear(x, w_gate_up).chunk(2, dim=-1)
    return linear(F.silu(gate) * up, w_down)


def _lm_head(model, x, w):
    from minirepro.papers.serve.gemm import linear

    return linear(model.norm(x), w)


def _decode_attn(k_cache, v_cache, tables, lens, q):
    """The runner's decode attention (the paged kernel, or gather + SDPA without it).

    k_cache, v_cache: (num_blocks, block_size, H_kv, D); tables: (B, nb); lens: (B,);
    q: (B, H, D).
    """
    from minirepro.papers.serve.kernels import kernel_available
    from minirepro.papers.serve.paged_attention import attend_paged, kernel_fits

    use_kernel = kernel_fits(k_cache, q.shape[-1]) and kernel_available()
    return attend_paged(q, k_cache, v_cache, tables, lens, use_kernel)


def _sample(logits):
    """Greedy sampling as the engine does it: one argmax, ids to Python."""
    try:
        from minirepro.papers.serve.sampling import SamplingParams, sample_tokens
    except ImportError:  # the engine is not there: the same work by hand
        return logits.argmax(-1).tolist()
    params = [SamplingParams(temperature=0.0)] * logits.shape[0]
    return sample_tokens(logits, params, [None] * logits.shape[0])


def _detok_curve(tokenizer, repeats: int) -> Curve:
    """Seconds of incremental detokenisation of one new token per sequence."""
    try:
        from minirepro.papers.serve.sampling import Detokenizer
    except ImportError:
        Detokenizer = None
    ids = [int(t) for t in tokenizer.encode("The quick brown fox jumps over the lazy dog " * 8)]
    state = {"i": 0, "d": None}

    def step():
        if Detokenizer is not None:
            if state["d"] is None or state["i"] >= len(ids):
                state["d"], state["i"] = Detokenizer(tokenizer, []), 0
            state["d"].add([ids[state["i"]]])
            state["d"].delta(False)
        else:
            i = state["i"] = (state["i"] + 1) % (len(ids) - 6)
            tokenizer.decode(ids[i : i + 5]), tokenizer.decode(ids[i : i + 6])
        state["i"] += 1

    per_token = _time(step, repeats)
    return Curve([1.0, 256.0], [per_token, 256 * per_token])


def profile(
    model,
    tokenizer=None,
    *,
    token_grid: Sequence[int] = (1, 4, 16, 64, 128, 256, 512),
    repeats: int = 3,
    host: Mapping[str, Curve] | None = None,
    interference: bool = True,
) -> OpCosts:
    """Measures the per-op costs of the core `Transformer` on this CPU.

    Times layer 0's ops alone (all layers share shapes): RMSNorm + RoPE, the Q/K/V and
    output projections and the SwiGLU MLP at each batch size in `token_grid`; decode
    attention (SDPA of one query per sequence over its cached keys) over several batch x
    context shapes; causal prefill attention; final norm + LM head; greedy sampling
    (argmax and transfer to Python); incremental detokenisation if `tokenizer` is given;
    a KV-offload write (raw bytes to a temporary file); and the compute/host interference.

    Args:
        model: A core `Transformer` (attention layers).
        tokenizer: An HF tokenizer for the detokenisation cost, or None (cost 0).
        token_grid: Batch sizes, in tokens, to time the dense ops at.
        repeats: Timing rounds per point (medians).
        host: Host-op curves measured elsewhere (e.g. the engine's scheduling time), which
            replace the ones measured here.
        interference: Measure the compute/host slowdown (about 0.6 s); 1 if False.

    Returns:
        The OpCosts, device "cpu".
    """
    import torch
    import torch.nn.functional as F

    from minirepro.core.model import rope_cos_sin

    cfg = model.cfg
    if any(cfg.mixer_of(i) != "attention" for i in range(cfg.n_layer)):
        raise ValueError("profile needs a model of attention layers only")
    block = model.layers[0]
    att = block.mixer
    dtype = model.embed.weight.dtype
    g = torch.Generator().manual_seed(0)
    pts: dict[str, dict[float, list[float]]] = {}

    def rec(name, x, fn):
        pts.setdefault(name, {}).setdefault(float(x), []).append(_time(fn, repeats))

    t_start = time.perf_counter()
    H, Hkv, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    with torch.inference_mode():
        # The engine's runner fuses q/k/v and gate/up into one GEMM each, with the weights
        # laid out for its GEMM backend; time the same.
        from minirepro.papers.serve.gemm import linear, pack, resolve_gemm

        kind = resolve_gemm("auto", att.wq.weight)
        w_qkv = pack(torch.cat([att.wq.weight, att.wk.weight, att.wv.weight]), kind)
        w_gu = pack(torch.cat([block.mlp.w_gate.weight, block.mlp.w_up.weight]), kind)
        w_o, w_down = pack(att.wo.weight, kind), pack(block.mlp.w_down.weight, kind)
        w_lm = pack(model.lm_head.weight, kind)
        for n in token_grid:
            x = torch.randn(n, cfg.d_model, generator=g).to(dtype)
            cos, sin = rope_cos_sin(torch.arange(n), D, cfg.rope_theta, dtype)
            q = torch.randn(n, H, D, generator=g).to(dtype)
            k = torch.randn(n, Hkv, D, generator=g).to(dtype)
            pool = torch.zeros(n, Hkv, D, dtype=dtype)
            slots = torch.randperm(n, generator=g)
            y = torch.randn(n, H * D, generator=g).to(dtype)
            rec(
                "norm_rope",
                n,
                partial(_norm_rope, block, x, q, k, cos[:, None], sin[:, None], pool, slots),
            )
            rec("qkv", n, partial(linear, x, w_qkv))
            rec("o_proj", n, partial(linear, y, w_o))
            rec("mlp", n, partial(_mlp, x, w_gu, w_down))
            if n <= 256:
                rec("lm_head", n, partial(_lm_head, model, x, w_lm))
                logits = torch.randn(n, cfg.vocab_size, generator=g).to(dtype)
                rec("sample", n, partial(_sample, logits))
        bs = 16
        for B in (1, 8, 32):
            for T in (32, 256, 1024):
                nb = -(-T // bs)
                k_cache = torch.randn(B * nb, bs, Hkv, D, generator=g).to(dtype)
                v_cache = torch.randn(B * nb, bs, Hkv, D, generator=g).to(dtype)
                tables = torch.randperm(B * nb, generator=g).view(B, nb)
                lens = torch.full((B,), T, dtype=torch.long)
                q = torch.randn(B, H, D, generator=g).to(dtype)
                fn = partial(_decode_attn, k_cache, v_cache, tables, lens, q)
                rec("attn_decode", B * T, fn)
        for S in (16, 64, 256, 512):
            q = torch.randn(1, H, S, D, generator=g).to(dtype)
            kv = torch.randn(1, Hkv, S, D, generator=g).to(dtype)
            fn = partial(
                F.scaled_dot_product_attention, q, kv, kv, is_causal=True, enable_gqa=H != Hkv
            )
            rec("attn_prefill", S * (S + 1) / 2, fn)
    curves = {name: _curve(p) for name, p in pts.items()}
    if tokenizer is not None:
        curves["detok"] = _detok_curve(tokenizer, repeats)
    # KV offload: bytes of one token's K and V in every layer, written raw to a file.
    bytes_per_token = cfg.n_layer * 2 * cfg.n_kv_head * cfg.head_dim * dtype.itemsize
    buf = torch.randn(
        max(1, (4 << 20) // (bytes_per_token // dtype.itemsize or 1)),
        bytes_per_token // dtype.itemsize,
        generator=g,
    ).to(dtype)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kv.bin")

        def write():
            with open(path, "wb") as f:
                f.write(buf.numpy().tobytes())

        t_write = _time(write, repeats)
    curves["offload"] = Curve([float(buf.shape[0])], [t_write])
    if host:
        curves.update(host)
    ops = {op for s in CPU_LAYER_STAGES for op in s} | {"lm_head"}
    resources = {op: "compute" for op in ops} | {
        "sample": "host",
        "detok": "host",
        "schedule": "host",
        "offload": "host",
    }
    return OpCosts(
        device="cpu",
        n_layer=cfg.n_layer,
        curves=curves,
        resources=resources,
        interference=measure_interference() if interference else {},
        layer_stages=CPU_LAYER_STAGES,
        meta={
            "model": {
                k: getattr(cfg, k)
                for k in ("n_layer", "d_model", "n_head", "n_kv_head", "d_ff", "vocab_size")
            },
            "dtype": str(dtype),
            "torch_threads": torch.get_num_threads(),
            "profile_seconds": time.perf_counter() - t_start,
            "measured": sorted(curves),
        },
    )


_PROFILE_CACHE: dict[tuple, OpCosts] = {}


def default_costs(model, tokenizer=None) -> OpCosts:
    """`profile(model, tokenizer)` once per model shape and thread count in this process."""
    import torch

    cfg = model.cfg
    key = (
        cfg.n_layer,
        cfg.d_model,
        cfg.n_head,
        cfg.n_kv_head,
        cfg.d_ff,
        cfg.vocab_size,
        str(model.embed.weight.dtype),
        torch.get_num_threads(),
        tokenizer is not None,
    )
    if key not in _PROFILE_CACHE:
        _PROFILE_CACHE[key] = profile(model, tokenizer, repeats=2)
    return _PROFILE_CACHE[key]
