"""retry: training tokens per second of packed rows with document ids vs length-bucketed batches.

The retry paper's models train on whole iGSM documents. Two ways to batch them compute the
same thing for each document (each attends only to itself, positions from its `<bos>`):

- ``packed``: rows of ``--seq-len`` tokens filled with whole documents (`pack_rows`), with
  document ids, so the core decoder applies a block-diagonal causal mask; attention still
  costs the row's length squared;
- ``bucketed``: one document per row, rows of similar length batched together
  (`bucket_batches`, what `minirepro run retry` uses); attention costs each document's
  own length squared.

Both train the quick preset's decoder (2 layers, d=64) with AdamW on the quick preset's
error-free documents, from the same weights; each contender's call is ``--steps`` training
steps on its own next batches. Calls are alternated (packed, bucketed, packed, ...); the
figure of merit is real (non-padding) tokens per second, the speed-up the paired median of
the per-round ratios.

    python benchmarks/retry.py [--steps 10] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import random

import torch

from minirepro.core.bench import BenchReport, time_contenders
from minirepro.core.model import ModelConfig, Transformer
from minirepro.core.train import lm_loss
from minirepro.papers.retry import PRESETS, Variant, bucket_batches, build_tokenizer, document
from minirepro.papers.retry.data import pack_rows
from minirepro.papers.retry.repro import _Pool


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed call")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seq-len", type=int, default=384, help="packed row length")
    parser.add_argument("--rows", type=int, default=2, help="packed rows per step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    parser.add_argument("--out", default=None, help="also write the JSON document here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PRESETS["quick"]
    n_batches = args.steps * (args.repeats + 2)  # warm-up and timed calls, no batch reused
    problems = list(itertools.islice(_Pool(cfg), 12 * args.rows * n_batches))
    tok = build_tokenizer(problems, mod=cfg.mod, whole_names=cfg.whole_names)

    def docs():
        rng = random.Random(0)
        return (document(tok, p, Variant("error-free"), rng) for p in problems)

    x, y, d, _ = pack_rows(docs(), args.rows * n_batches, args.seq_len, tok.pad_id)
    packed = [
        (x[i : i + args.rows], y[i : i + args.rows], d[i : i + args.rows])
        for i in range(0, len(x), args.rows)
    ]
    # the same real tokens per step as the packed rows hold on average
    per_step = int((d > 0).sum()) // n_batches
    bucketed, _, _ = bucket_batches(docs(), n_batches, per_step, tok.pad_id, cfg.max_len)

    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(vocab_size=tok.vocab_size, n_layer=cfg.n_layer_model, n_head=cfg.n_head,
                    d_model=cfg.d_model, max_seq_len=cfg.max_len)
    )  # fmt: skip
    contenders, counts = {}, {}
    for name, batches in (("packed", packed), ("bucketed", bucketed)):
        m = copy.deepcopy(model)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        it = iter(batches)

        def call(m=m, opt=opt, it=it, name=name):
            for _ in range(args.steps):
                batch = next(it)
                loss = lm_loss(m, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                counts[name] = counts.get(name, 0) + int((batch[2] > 0).sum())

        contenders[name] = call
    times = time_contenders(contenders, warmup=1, repeats=args.repeats)
    real = {
        name: sum(int((b[2] > 0).sum()) for b in batches) / len(batches)
        for name, batches in (("packed", packed), ("bucketed", bucketed))
    }
    per_token = {name: [t / (args.steps * real[name]) for t in times[name].times] for name in times}
    paired = sorted(p / b for p, b in zip(per_token["packed"], per_token["bucketed"]))
    report = BenchReport("retry")
    for name, t in times.items():
        shape = packed[0][0].shape if name == "packed" else "varies"
        report.add_case(
            impl=name, rows_x_len=str(tuple(shape)) if name == "packed" else shape,
            real_tokens_per_step=real[name], median_ms_per_step=t.median * 1e3 / args.steps,
            real_tokens_per_s=args.steps * real[name] / t.median,
        )  # fmt: skip
    report.set_summary(
        threads=torch.get_num_threads(),
        steps_per_call=args.steps,
        rounds=args.repeats,
        padding_packed=1 - int((d > 0).sum()) / d.numel(),
        padding_bucketed=1
        - sum(int((b[2] > 0).sum()) for b in bucketed) / sum(b[2].numel() for b in bucketed),
        tokens_per_s_speedup_bucketed_over_packed=paired[len(paired) // 2],
    )
    return report.emit(args.out)


if __name__ == "__main__":
    main()
