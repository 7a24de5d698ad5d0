"""Serving a hybrid: one engine decode iteration, Mamba layers stacked vs one call per sequence.

A random SmolLM2-shaped hybrid (d_model 576, 9 heads of 64, 3 KV heads, 4 layers: attention,
Mamba, attention, Mamba; `--mixer mamba2|mamba`); B sequences prefilled to C tokens through
the engine's runner, then the same decode iteration (`ModelRunner.forward` on B rows) timed
with `batch_recurrent_decode` on and off, alternated, every state put back after each call
so that each one does the same work. Outputs of the two paths are checked equal first.

    python benchmarks/serve_hybrid.py [--mixer mamba2] [--batches 4,16,64] [--context 128]
        [--threads 1]  (1 when other jobs share the cores: 2 threads then stall at random)
"""

from __future__ import annotations

import argparse
import json
import os

import torch

import minirepro.papers.hybrid  # noqa: F401  (registers the Mamba mixers)
from minirepro.core.bench import machine_info, paired_ratio, time_contenders
from minirepro.core.model import ModelConfig, Transformer
from minirepro.papers.serve.engine import EngineConfig, LLMEngine
from minirepro.papers.serve.runner import SeqWork


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mixer", default="mamba2", choices=["mamba2", "mamba"])
    ap.add_argument("--batches", default="4,16,64")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    m = args.mixer
    cfg = ModelConfig(
        vocab_size=4096, n_layer=4, n_head=9, n_kv_head=3, d_model=576, head_dim=64, d_ff=1536,
        max_seq_len=1024, mixer=("attention", m, "attention", m),
    )  # fmt: skip
    engine = LLMEngine(Transformer(cfg).eval(), config=EngineConfig(num_blocks=2048))
    runner, C = engine.runner, args.context
    rows = []
    for B in (int(b) for b in args.batches.split(",")):
        g = torch.Generator().manual_seed(B)
        seqs = []
        for _ in range(B):
            table, state = engine.blocks.allocate(C // 16 + 1), runner.new_state()
            batch = runner.prepare([SeqWork(0, C, table, True, state)])
            runner.set_input_ids(
                batch, torch.randint(0, cfg.vocab_size, (C,), generator=g).tolist()
            )
            runner.forward(batch)
            seqs.append((table, state))

        def step(stacked: bool, seqs=seqs, B=B):
            def run() -> torch.Tensor:
                runner.batch_recurrent_decode = stacked
                saved = [[(s.conv, s.ssm, s.pos) if s else None for s in st] for _, st in seqs]
                batch = runner.prepare([SeqWork(C, 1, t, True, st) for t, st in seqs])
                runner.set_input_ids(batch, [1] * B)
                logits = runner.forward(batch)
                for (_, st), sv in zip(seqs, saved):  # back to C tokens
                    for s, v in zip(st, sv):
                        if s is not None:
                            s.conv, s.ssm, s.pos = v
                return logits

            return run

        torch.testing.assert_close(step(True)(), step(False)(), rtol=1e-4, atol=1e-4)
        t = time_contenders({"stacked": step(True), "per_seq": step(False)}, repeats=args.repeats)
        rows.append({
            "B": B, "stacked_ms": 1e3 * t["stacked"].median, "per_seq_ms": 1e3 * t["per_seq"].median,
            "per_seq/stacked": paired_ratio(t["per_seq"], t["stacked"]),
        })  # fmt: skip
        for table, _ in seqs:
            engine.blocks.release(table)
    print(f"{'B':>4} {'stacked ms':>11} {'per seq ms':>11} {'per seq / stacked':>18}")
    for r in rows:
        print(
            f"{r['B']:>4} {r['stacked_ms']:>11.2f} {r['per_seq_ms']:>11.2f} {r['per_seq/stacked']:>17.2f}x"
        )
    info = {"mixer": m, "context": C, "load": os.getloadavg(), "threads": torch.get_num_threads()}
    print(json.dumps(info | {"rows": rows, "machine": machine_info()}))


if __name__ == "__main__":
    main()
