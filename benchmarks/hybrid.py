"""Hybrid benchmark: our selective scan vs transformers' torch Mamba paths, hybrid vs
all-attention decoding at long context, speculative vs plain decoding.

- Mamba-1 mixer (d_model 256, d_inner 512, d_state 16) and Mamba-2 mixer (8 heads of 64,
  d_state 64): prefill forward (B=1, L=`--length`), forward + backward, and one decoding
  step from a prefilled state, ours vs transformers' `MambaMixer` / `Mamba2Mixer` (their
  torch code: no mamba_ssm kernels on a CPU), same weights, outputs checked first.
- Decode step time of SmolLM2-135M (30 attention layers) vs its 50% hybrid (every other
  layer Mamba-2; weights from `to_hybrid`, speed only) after a prompt of C tokens, and the
  decoding state each keeps per sequence.
- Speculative (int8 draft of the target, K drafts) vs plain greedy decoding of the hybrid.
Contenders alternate; medians; the load average is recorded.

    python benchmarks/hybrid.py [--length 512] [--contexts 256,1024] [--threads 1]
"""

from __future__ import annotations

import argparse
import os

import torch

from minirepro.core.bench import BenchReport, paired_ratio, time_contenders
from minirepro.core.generate import generate
from minirepro.core.model import MixerInput, ModelConfig, rope_cos_sin
from minirepro.papers.hybrid import (
    Mamba2Mixer,
    MambaMixer,
    int8_draft,
    replaced_layers,
    speculative_generate,
    to_hybrid,
)


def _inp(S: int, start: int = 0, cache=None) -> MixerInput:
    cos, sin = rope_cos_sin(torch.arange(start, start + S), 64, 10000.0)
    return MixerInput(cos, sin, start, cache)


def mixers(kind: str):
    """Ours and transformers' mixer of the same shape and weights."""
    torch.manual_seed(0)
    if kind == "mamba":
        from transformers import MambaConfig
        from transformers.models.mamba.modeling_mamba import MambaMixer as HF

        cfg = ModelConfig(d_model=256, n_head=4, mixer_kwargs={"d_state": 16, "expand": 2})
        ours = MambaMixer(cfg, 0)
        hf = HF(MambaConfig(hidden_size=256, state_size=16, intermediate_size=512,
                            time_step_rank=ours.dt_rank, num_hidden_layers=1), 0)  # fmt: skip
        hf.load_state_dict(ours.state_dict())
    else:
        from transformers import Mamba2Config
        from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HF

        cfg = ModelConfig(d_model=256, n_head=8, n_kv_head=8, head_dim=64,
                          mixer_kwargs={"d_state": 64, "chunk_size": 64})  # fmt: skip
        ours = Mamba2Mixer(cfg, 0)
        hf = HF(Mamba2Config(hidden_size=256, num_heads=8, head_dim=64, state_size=64, expand=2,
                             n_groups=8, chunk_size=64, layer_norm_epsilon=cfg.norm_eps,
                             num_hidden_layers=1), 0)  # fmt: skip
        hf.load_state_dict(
            {k.replace("norm_weight", "norm.weight"): v for k, v in ours.state_dict().items()}
        )
    return ours.eval(), hf.eval(), cfg


def bench_mixer(report: BenchReport, kind: str, L: int, repeats: int) -> dict[str, float]:
    from transformers import DynamicCache, Mamba2Config, MambaConfig  # noqa: F401

    ours, hf, _ = mixers(kind)
    x = torch.randn(1, L, 256)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, _inp(L)), hf(x), atol=1e-4, rtol=1e-3)
    out = {}

    def fwd(m, is_ours):
        def f():
            with torch.no_grad():
                return m(x, _inp(L)) if is_ours else m(x)

        return f

    def fwbw(m, is_ours):
        xg = x.clone().requires_grad_(True)

        def f():
            (m(xg, _inp(L)) if is_ours else m(xg)).square().mean().backward()

        return f

    for case, make in (("prefill", fwd), ("prefill_fwbw", fwbw)):
        t = time_contenders({"transformers": make(hf, False), "ours": make(ours, True)},
                            warmup=1, repeats=repeats)  # fmt: skip
        report.add_timings(t, baseline="transformers", mixer=kind, case=case, seq_len=L)
        out[f"{kind}_{case}_speedup"] = paired_ratio(t["transformers"], t["ours"])

    # One decoding step after a prefill of L tokens, each side with its own state.
    state = ours.new_cache(1, L + 10_000, "cpu", torch.float32)
    hf_cache = DynamicCache(config=hf_cfg(kind, hf))
    x1 = torch.randn(1, 1, 256)
    with torch.no_grad():
        ours(x, _inp(L, 0, state))
        hf(x, cache=hf_cache)
        torch.testing.assert_close(
            ours(x1, _inp(1, L, state)), hf(x1, cache=hf_cache), atol=1e-4, rtol=1e-3
        )

    def step_ours():
        with torch.no_grad():
            ours(x1, _inp(1, state.pos, state))

    def step_hf():
        with torch.no_grad():
            hf(x1, cache=hf_cache)

    t = time_contenders(
        {"transformers": step_hf, "ours": step_ours}, warmup=3, repeats=repeats * 20
    )
    report.add_timings(t, baseline="transformers", mixer=kind, case="decode_step", seq_len=1)
    out[f"{kind}_decode_speedup"] = paired_ratio(t["transformers"], t["ours"])
    return out


def hf_cfg(kind: str, hf) -> object:
    from transformers import Mamba2Config, MambaConfig

    if kind == "mamba":
        return MambaConfig(hidden_size=256, state_size=16, intermediate_size=512,
                           time_step_rank=hf.time_step_rank, num_hidden_layers=1)  # fmt: skip
    return Mamba2Config(hidden_size=256, num_heads=8, head_dim=64, state_size=64, expand=2,
                        n_groups=8, chunk_size=64, num_hidden_layers=1)  # fmt: skip


def _state_bytes(cache, pos: int) -> int:
    total = 0
    for layer in cache.layers:
        if hasattr(layer, "ssm"):
            total += layer.ssm.numel() * layer.ssm.element_size()
            total += 0 if layer.conv is None else layer.conv.numel() * layer.conv.element_size()
        else:  # KV cache: the positions held, not the preallocated length
            total += 2 * layer.k[:, :, :pos].numel() * layer.k.element_size()
    return total


def bench_long_context(report: BenchReport, contexts: list[int], repeats: int) -> dict[str, float]:
    from minirepro.core.pretrained import load_smollm2

    attn = load_smollm2().model
    hybrid = to_hybrid(attn, replaced_layers(attn.cfg.n_layer, 0.5), seed=0).eval()
    out = {}
    for C in contexts:
        ids = torch.randint(0, attn.cfg.vocab_size, (1, C))
        caches, steps = {}, {}
        for name, m in (("attention (SmolLM2)", attn), ("hybrid 50%", hybrid)):
            cache = m.new_cache(1, C + 4 * repeats + 16)
            with torch.no_grad():
                m(ids, cache)
            caches[name] = (m, cache)

            def step(m=m, cache=cache):
                with torch.no_grad():
                    m(torch.tensor([[1]]), cache)

            steps[name] = step
        t = time_contenders(steps, warmup=1, repeats=repeats)
        report.add_timings(t, baseline="attention (SmolLM2)", case="decode_step", context=C)
        for name, (_, cache) in caches.items():
            report.add_case(
                case="state_bytes", context=C, impl=name, mib=_state_bytes(cache, cache.pos) / 2**20
            )
        out[f"hybrid_decode_speedup_at_{C}"] = paired_ratio(
            t["attention (SmolLM2)"], t["hybrid 50%"]
        )
    return out


def bench_speculative(report: BenchReport, tokens: int, repeats: int) -> dict[str, float]:
    from minirepro.core.pretrained import load_smollm2

    p = load_smollm2()
    target = to_hybrid(p.model, [22, 24, 26, 28], seed=0).eval()
    draft = int8_draft(target)
    prompt = p.encode_chat([{"role": "user", "content": "Write a short paragraph about rivers."}])
    greedy = generate(target, prompt, max_new_tokens=tokens)[0]
    out = {}
    fns = {"plain": lambda: generate(target, prompt, max_new_tokens=tokens)}
    for k in (2, 4):
        spec, stats = speculative_generate(target, draft, prompt, tokens, k=k)
        assert spec == greedy, "speculative output differs from greedy"
        out[f"passes_ratio_k{k}"] = stats.tokens / stats.target_passes
        out[f"acceptance_k{k}"] = stats.acceptance_rate
        fns[f"speculative K={k}"] = lambda k=k: speculative_generate(
            target, draft, prompt, tokens, k=k
        )
    t = time_contenders(fns, warmup=0, repeats=repeats)
    report.add_timings(t, baseline="plain", case="generate", tokens=tokens)
    for k in (2, 4):
        out[f"spec_speedup_k{k}"] = paired_ratio(t["plain"], t[f"speculative K={k}"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--contexts", default="256,1024")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--skip", default="", help="comma list of: mixers, context, speculative")
    ap.add_argument("--json", default=None, help="also write the JSON document here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    report = BenchReport("hybrid")
    summary: dict[str, float] = {"threads": args.threads, "load_before": os.getloadavg()[0]}
    if "mixers" not in skip:
        for kind in ("mamba", "mamba2"):
            summary |= bench_mixer(report, kind, args.length, args.repeats)
    if "context" not in skip:
        summary |= bench_long_context(
            report, [int(c) for c in args.contexts.split(",")], args.repeats
        )
    if "speculative" not in skip:
        summary |= bench_speculative(report, args.tokens, max(2, args.repeats // 2))
    summary["load_after"] = os.getloadavg()[0]
    report.set_summary(**summary)
    report.emit(args.json)


if __name__ == "__main__":
    main()
