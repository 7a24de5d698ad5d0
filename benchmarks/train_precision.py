"""fp32 vs bf16 training time of each paper's own training, at its quick-preset size.

The measurement behind each paper's choice of `precision` (issue 27): fp32 and bf16 autocast
alternated in one process, paired per-round ratios.

- flow: each experiment's training (its model, loss and batches) through the core trainer,
  one thread (flow's setting); only `train()` is timed, sampling is cut to a minimum.
- flexattn, rnn: the core trainer on the paper's quick-preset model and task, two threads.
- jacobian: one chunk of the forward-mode pushforward the repro uses (`MLPPushforward`,
  width 32, 256 tangents through one epoch), and `vmap(jvp(train))`, one thread, each
  under bf16 autocast or not (jacobian's training is not the core trainer's).

    python benchmarks/train_precision.py [--papers flow,flexattn,rnn,jacobian] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

from minirepro.core.bench import BenchReport, time_contenders
from minirepro.core.model import ModelConfig, Transformer
from minirepro.core.precision import cpu_features
from minirepro.core.train import TrainConfig, train

PRECISIONS = ("fp32", "bf16")


def _add(report: BenchReport, case: str, fp32: list[float], bf16: list[float], **extra) -> None:
    """One row from per-round times (seconds per call or per step)."""
    ratio = statistics.median(b / f for f, b in zip(fp32, bf16))
    row = dict(case=case, fp32_ms=statistics.median(fp32) * 1e3,
               bf16_ms=statistics.median(bf16) * 1e3, bf16_over_fp32=ratio, **extra)  # fmt: skip
    report.add_case(**row)
    print(f"{case}: fp32 {row['fp32_ms']:.2f} ms, bf16 {row['bf16_ms']:.2f} ms, "
          f"bf16/fp32 {ratio:.3f}", flush=True)  # fmt: skip


def _time_pair(report: BenchReport, case: str, make: Callable[[str], Callable], repeats: int,
               **extra) -> None:  # fmt: skip
    t = time_contenders({p: make(p) for p in PRECISIONS}, warmup=1, repeats=repeats)
    _add(report, case, list(t["fp32"].times), list(t["bf16"].times), **extra)


def bench_flexattn(report: BenchReport, repeats: int) -> None:
    from minirepro.papers.flexattn import repro
    from minirepro.papers.flexattn.attention import register

    register()
    torch.set_num_threads(2)
    c = repro.PRESETS["quick"]

    def make(p: str):
        torch.manual_seed(0)
        model = Transformer(ModelConfig(
            vocab_size=16, n_layer=2, n_head=4, n_kv_head=2, d_model=c.d_model,
            max_seq_len=c.train_seq_len, attention="flex", mask=f"sliding_window_{c.train_window}",
            mixer_kwargs={"flex_block_size": 16},
        ))  # fmt: skip
        cfg = TrainConfig(steps=5, lr=3e-3, warmup_steps=1, batch_size=c.batch_size,
                          log_every=5, precision=p)  # fmt: skip
        return lambda: train(model, cfg, repro._lag_batches(c))

    _time_pair(report, "flexattn: lag-copy model, 5 steps", make, repeats, threads=2)


def bench_rnn(report: BenchReport, repeats: int) -> None:
    from minirepro.papers.rnn import repro
    from minirepro.tasks.state_tracking import parity_batch

    torch.set_num_threads(2)
    c = repro.PRESETS["quick"]
    for mixer in ("slstm", "attention"):

        def make(p: str, mixer: str = mixer):
            torch.manual_seed(0)
            model = Transformer(ModelConfig(
                vocab_size=2, n_layer=c.n_layer, n_head=c.n_head, d_model=c.d_model,
                mixer=mixer, max_seq_len=c.eval_seq_len,
            ))  # fmt: skip
            cfg = TrainConfig(steps=5, lr=1e-2, warmup_steps=1, batch_size=c.batch_size,
                              log_every=5, precision=p)  # fmt: skip
            return lambda: train(
                model, cfg, lambda s, g: parity_batch(c.batch_size, c.train_seq_len, g)
            )

        _time_pair(report, f"rnn: parity, {mixer} model, 5 steps", make, repeats, threads=2)


def bench_jacobian(report: BenchReport, repeats: int) -> None:
    from torch.func import jvp, vmap

    from minirepro.papers.jacobian.fast import MLPPushforward
    from minirepro.papers.jacobian.setup import MLP, FlatModel, OptimConfig, load_digits_data
    from minirepro.papers.jacobian.setup import train as sgd_train

    torch.set_num_threads(1)
    data = load_digits_data()
    flat = FlatModel(MLP(hidden=(32,)).init_(torch.Generator().manual_seed(0)))
    theta, cfg = flat.flat(), OptimConfig(epochs=1)
    push = MLPPushforward(data, 32, cfg)
    tangents = torch.eye(theta.numel())[:256]

    def autocast(p: str, fn: Callable) -> Callable:
        def call():
            with torch.autocast("cpu", torch.bfloat16, enabled=p == "bf16"):
                return fn()

        return call

    _time_pair(report, "jacobian: MLPPushforward, 256 tangents, 25 steps",
               lambda p: autocast(p, lambda: push(theta, tangents)), repeats, threads=1)  # fmt: skip
    small = load_digits_data(n_train=640)

    def vjp_chunk():
        fn = lambda th: sgd_train(th, small, flat.apply, cfg)  # noqa: E731
        return vmap(lambda t: jvp(fn, (theta,), (t,))[1])(tangents[:64])

    _time_pair(report, "jacobian: vmap(jvp(train)), 64 tangents, 10 steps",
               lambda p: autocast(p, vjp_chunk), repeats, threads=1)  # fmt: skip


def bench_flow(report: BenchReport, repeats: int, steps: int = 60) -> None:
    from minirepro.papers.flow import experiments as ex
    from minirepro.papers.flow.repro import PRESETS

    torch.set_num_threads(1)
    spent: list[tuple[float, str]] = []
    real_train = ex.train

    def timed_train(*args, **kwargs):
        start = time.perf_counter()
        state = real_train(*args, **kwargs)
        spent.append((time.perf_counter() - start, state.precision))
        return state

    cfg = dataclasses.replace(
        PRESETS["quick"], cb_steps=steps, dcb_steps=steps, sph_steps=steps, dig_steps=steps,
        cb_samples=200, cb_sample_steps=2, dcb_samples=200, dcb_sample_steps=2, sph_samples=50,
        sph_sample_steps=2, sph_permutations=10, dig_samples_per_class=2, dig_sample_steps=2,
    )  # fmt: skip
    runs = {"checkerboard": (ex.run_checkerboard, cfg.cb_width),
            "discrete": (ex.run_discrete_checkerboard, cfg.dcb_width),
            "sphere": (ex.run_sphere, cfg.sph_width), "digits": (ex.run_digits, cfg.dig_width)}  # fmt: skip
    ex.train = timed_train
    try:
        for name, (run, width) in runs.items():
            per_step: dict[str, list[float]] = {p: [] for p in PRECISIONS}
            for _ in range(repeats):
                for p in PRECISIONS:
                    spent.clear()
                    run(dataclasses.replace(cfg, precision=p), 0)
                    per_step[p].append(spent[0][0] / steps)
            spent.clear()  # which precision "auto" picks: a one-step run
            run(dataclasses.replace(cfg, precision="auto", **{_steps_field(name): 1}), 0)
            _add(report, f"flow: {name} (width {width}), per step", per_step["fp32"],
                 per_step["bf16"], threads=1, auto=spent[0][1])  # fmt: skip
    finally:
        ex.train = real_train


def _steps_field(name: str) -> str:
    return {"checkerboard": "cb_steps", "discrete": "dcb_steps", "sphere": "sph_steps",
            "digits": "dig_steps"}[name]  # fmt: skip


BENCHES = {"flow": bench_flow, "flexattn": bench_flexattn, "rnn": bench_rnn,
           "jacobian": bench_jacobian}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--papers", default=",".join(BENCHES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the JSON document here")
    args = parser.parse_args(argv)
    report = BenchReport("train_precision")
    feats = cpu_features()
    if not feats.native_bf16:
        print(f"no native bf16 on this CPU ({feats.describe()}): nothing to compare")
    else:
        threads = torch.get_num_threads()
        for name in args.papers.split(","):
            if name not in BENCHES:
                raise SystemExit(f"unknown paper {name!r}; known: {', '.join(BENCHES)}")
            try:
                BENCHES[name](report, args.repeats)
            finally:
                torch.set_num_threads(threads)
    report.set_summary(
        cpu_features=feats.describe(), **{r["case"]: r["bf16_over_fp32"] for r in report.cases}
    )
    return report.emit(args.out)


if __name__ == "__main__":
    main()
