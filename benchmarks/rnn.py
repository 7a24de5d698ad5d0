"""FlashRNN benchmark: our fused CPU kernel vs the PyPI flashrnn loops and torch.nn.LSTM.

Forward + backward at B=16, N=4 heads, D=64, fp32:
- each function vs flashrnn's backend="vanilla" (a Python loop under autograd) at T=256 and
  T=1024, warmed up, >= 3 alternated rounds, with the time per step of both sides, the
  vanilla loop's forward/backward split and its page faults per call (its backward's cost
  per step grows with T: see NOTES.md, "Why the vanilla loop's time per step grows");
- at T=1024 (`--T`): lstm and slstm vs flashrnn's backend="vanilla_fwbw" (a Python loop
  with a hand-written backward);
- lstm vs torch.nn.LSTM of the same total hidden size (dense recurrence, oneDNN), the input
  projection included on both sides;
- the seconds ConstrINT takes on the GPU-style tiling set;
- a sweep over T and D (lstm, ours vs vanilla_fwbw) with a figure;
- on a CUDA GPU only (`--gpu`, default when one is present): our Triton kernels vs
  flashrnn's vanilla loop on the GPU and vs torch.nn.LSTM (cuDNN), same shapes. Not run
  here so far: no GPU was lent to the sessions that wrote it (see NOTES.md).
Outputs are checked against the reference before timing; contenders alternate, medians.

    python benchmarks/rnn.py [--repeats 5] [--vanilla-repeats 3] [--lengths 256,1024]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import torch

from minirepro.core.bench import BenchReport, first_call_time, ratio, time_contenders
from minirepro.papers.rnn import FUNCTIONS, flashrnn, load_extension
from minirepro.papers.rnn.constrint import solve
from minirepro.papers.rnn.cpu import OPENMP
from minirepro.papers.rnn.functions import cell_spec
from minirepro.papers.rnn.tiling import gpu_constraints


def inputs(function: str, B: int, T: int, N: int, D: int, seed: int = 0):
    s = cell_spec(function)
    g = torch.Generator().manual_seed(seed)
    Wx = torch.randn(B, T, s.n_gates_w, N, D, generator=g).requires_grad_()
    R = (torch.randn(s.n_gates_r, N, D, D, generator=g) / D**0.5).requires_grad_()
    b = torch.randn(s.n_gates_b, N, D, generator=g).requires_grad_()
    return Wx, R, b


def fwbw(fn, Wx, R, b):
    """A zero-argument forward + backward of fn(Wx, R, b) -> (out, last)."""

    def call():
        out, last = fn(Wx, R, b)
        (out[0].sum() + last[0].sum()).backward()
        Wx.grad = R.grad = b.grad = None

    return call


def ours(function):
    return lambda Wx, R, b: flashrnn(Wx, R, b, function=function, backend="cpu")


def pypi(function, backend):
    from flashrnn import flashrnn as ref

    return lambda Wx, R, b: ref(Wx, R, b, function=function, backend=backend, dtype="float32")


class Phases:
    """fwbw with the forward's and the backward's seconds, and the process's minor page
    faults, recorded per call (to explain where a contender's time goes)."""

    def __init__(self, fn, Wx, R, b):
        self.fn, self.args = fn, (Wx, R, b)
        self.fwd: list[float] = []
        self.bwd: list[float] = []
        self.faults: list[int] = []

    def __call__(self):
        Wx, R, b = self.args
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        out, last = self.fn(Wx, R, b)
        t1 = time.perf_counter()
        (out[0].sum() + last[0].sum()).backward()
        t2 = time.perf_counter()
        self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        self.fwd.append(t1 - t0)
        self.bwd.append(t2 - t1)
        Wx.grad = R.grad = b.grad = None

    def medians(self, skip: int) -> tuple[float, float, float]:
        """Median forward s, backward s and faults over the calls after the first `skip`."""
        return tuple(statistics.median(x[skip:]) for x in (self.fwd, self.bwd, self.faults))


def check_close(function, backend, shape=(2, 16, 2, 16)):
    Wx, R, b = inputs(function, *shape, seed=1)
    a, _ = ours(function)(Wx, R, b)
    e, _ = pypi(function, backend)(Wx, R, b)
    torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--B", type=int, default=16)
    parser.add_argument("--T", type=int, default=1024)
    parser.add_argument("--N", type=int, default=4)
    parser.add_argument("--D", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vanilla-repeats", type=int, default=3)
    parser.add_argument("--vanilla-warmup", type=int, default=1)
    parser.add_argument("--lengths", default="256,1024",
                        help="sequence lengths of the comparison with the vanilla loop")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--gpu", action=argparse.BooleanOptionalAction,
                        default=torch.cuda.is_available())  # fmt: skip
    parser.add_argument("--cpu", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/rnn"))
    args = parser.parse_args(argv)
    if args.vanilla_repeats < 3 or args.vanilla_warmup < 1:
        parser.error("the vanilla comparison needs >= 1 warm-up call and >= 3 timed rounds")
    torch.set_num_threads(args.threads)
    B, T, N, D = args.B, args.T, args.N, args.D
    report = BenchReport("rnn")
    summary = {}

    if args.gpu:
        summary.update(gpu_cases(report, B, T, N, D, args.repeats))
    if not args.cpu:
        report.set_summary(**summary)
        args.out.mkdir(parents=True, exist_ok=True)
        return report.emit(args.out / "rnn.json")

    build_s = first_call_time(load_extension)
    report.add_case(case="cpu kernel build/load", seconds=build_s, openmp=OPENMP)

    # 1. each function vs the vanilla loop at each length: warmed up, alternated rounds
    lengths = [int(t) for t in args.lengths.split(",")]
    ratios = []
    for function in FUNCTIONS:
        check_close(function, "vanilla")
        step_ms = {}
        for t_ in lengths:
            Wx, R, b = inputs(function, B, t_, N, D)
            vanilla = Phases(pypi(function, "vanilla"), Wx, R, b)
            fns = {"ours": fwbw(ours(function), Wx, R, b), "vanilla": vanilla}
            times = time_contenders(fns, warmup=args.vanilla_warmup, repeats=args.vanilla_repeats)
            fwd_s, bwd_s, faults = vanilla.medians(args.vanilla_warmup)
            report.add_timings(times, baseline="vanilla", case=f"{function} vs vanilla", T=t_,
                               D=D, vanilla_fwd_ms=fwd_s * 1e3, vanilla_bwd_ms=bwd_s * 1e3,
                               vanilla_faults=faults)  # fmt: skip
            r = ratio(times["vanilla"], times["ours"])
            ratios.append(r)
            step_ms[t_] = times["vanilla"].median / t_ * 1e3
            summary[f"{function}_vs_vanilla_T{t_}"] = r
            summary[f"{function}_ours_s_T{t_}"] = times["ours"].median
            summary[f"{function}_vanilla_s_T{t_}"] = times["vanilla"].median
            summary[f"{function}_vanilla_ms_per_step_T{t_}"] = step_ms[t_]
            summary[f"{function}_ours_ms_per_step_T{t_}"] = times["ours"].median / t_ * 1e3
            summary[f"{function}_vanilla_first_call_s_T{t_}"] = vanilla.fwd[0] + vanilla.bwd[0]
        if len(lengths) > 1:  # 1.0 if the vanilla loop's cost per step did not depend on T
            lo, hi = min(lengths), max(lengths)
            summary[f"{function}_vanilla_step_growth_T{lo}_to_T{hi}"] = step_ms[hi] / step_ms[lo]
    summary["min_vs_vanilla"] = min(ratios)
    summary["all_vs_vanilla_ge_30"] = min(ratios) >= 30

    # 2. lstm, slstm vs vanilla_fwbw
    for function in ("lstm", "slstm"):
        check_close(function, "vanilla_fwbw")
        Wx, R, b = inputs(function, B, T, N, D)
        fns = {"ours": fwbw(ours(function), Wx, R, b),
               "vanilla_fwbw": fwbw(pypi(function, "vanilla_fwbw"), Wx, R, b)}  # fmt: skip
        times = time_contenders(fns, warmup=1, repeats=args.repeats)
        report.add_timings(times, baseline="vanilla_fwbw", case=f"{function} vs fwbw", T=T, D=D)
        summary[f"{function}_vs_vanilla_fwbw"] = ratio(times["vanilla_fwbw"], times["ours"])

    # 3. lstm vs torch.nn.LSTM, same total hidden size, input projection on both sides
    H = N * D
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, H, generator=g).requires_grad_()
    lstm = torch.nn.LSTM(H, H, batch_first=True)
    proj = torch.nn.Linear(H, 4 * H)
    R = (torch.randn(4, N, D, D, generator=g) / D**0.5).requires_grad_()
    bias = torch.zeros(4, N, D, requires_grad=True)

    def run_torch():
        y, _ = lstm(x)
        y.sum().backward()

    def run_ours():
        Wx = proj(x).view(B, T, 4, N, D)  # (B, T, G, N, D)
        out, _ = flashrnn(Wx, R, bias, function="lstm", backend="cpu")
        out[0].sum().backward()

    times = time_contenders({"ours": run_ours, "torch.nn.LSTM": run_torch}, warmup=1,
                            repeats=args.repeats)  # fmt: skip
    report.add_timings(times, baseline="torch.nn.LSTM", case="lstm vs torch.nn.LSTM", T=T, D=D)
    summary["lstm_vs_torch_lstm"] = ratio(times["torch.nn.LSTM"], times["ours"])

    # 4. ConstrINT on the GPU-style set (the hardest feasible one of a few sizes)
    solve_s = []
    for d in (64, 256, 512):
        cons, vs = gpu_constraints(B, d, 4, N)
        t0 = time.perf_counter()
        solve(cons, vs)
        solve_s.append(time.perf_counter() - t0)
    summary["constrint_solve_s"] = max(solve_s)

    # 5. sweep over T and D: lstm, ours vs vanilla_fwbw
    if not args.no_sweep:
        sweep = []
        for t_, d_ in [(256, D), (512, D), (T, D), (256, 32), (256, 128)]:
            Wx, R2, b2 = inputs("lstm", B, t_, N, d_)
            fns = {"ours": fwbw(ours("lstm"), Wx, R2, b2),
                   "vanilla_fwbw": fwbw(pypi("lstm", "vanilla_fwbw"), Wx, R2, b2)}  # fmt: skip
            tm = time_contenders(fns, warmup=1, repeats=max(3, args.repeats // 2))
            report.add_timings(tm, baseline="vanilla_fwbw", case="sweep lstm", T=t_, D=d_)
            sweep.append((t_, d_, tm["ours"].median, tm["vanilla_fwbw"].median))
        summary["sweep_figure"] = str(plot_sweep(sweep, args.out, D))

    report.set_summary(**summary)
    args.out.mkdir(parents=True, exist_ok=True)
    return report.emit(args.out / "rnn.json")


def gpu_cases(report: BenchReport, B: int, T: int, N: int, D: int, repeats: int) -> dict:
    """Triton kernels on the GPU vs flashrnn's vanilla loop there and cuDNN's LSTM."""
    dev = torch.device("cuda")
    summary = {"gpu": torch.cuda.get_device_name(dev)}

    def on_gpu(function):
        Wx, R, b = (x.detach().to(dev).requires_grad_() for x in inputs(function, B, T, N, D))
        return Wx, R, b

    def triton_fn(function):
        return lambda Wx, R, b: flashrnn(Wx, R, b, function=function, backend="triton")

    for function in FUNCTIONS:
        Wx, R, b = on_gpu(function)
        a, _ = triton_fn(function)(Wx, R, b)
        e, _ = pypi(function, "vanilla")(Wx, R, b)
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)
        first_s = first_call_time(fwbw(triton_fn(function), Wx, R, b), sync=torch.cuda.synchronize)
        fns = {"triton": fwbw(triton_fn(function), Wx, R, b),
               "vanilla": fwbw(pypi(function, "vanilla"), Wx, R, b)}  # fmt: skip
        times = time_contenders(fns, warmup=1, repeats=repeats)
        report.add_timings(times, baseline="vanilla", case=f"gpu {function} vs vanilla", T=T, D=D)
        summary[f"gpu_{function}_vs_vanilla"] = ratio(times["vanilla"], times["triton"])
        summary[f"gpu_{function}_triton_s"] = times["triton"].median
        summary[f"gpu_{function}_first_call_s"] = first_s
    H = N * D
    x = torch.randn(B, T, H, device=dev, requires_grad=True)
    lstm = torch.nn.LSTM(H, H, batch_first=True).to(dev)
    proj = torch.nn.Linear(H, 4 * H).to(dev)
    R = (torch.randn(4, N, D, D, device=dev) / D**0.5).requires_grad_()
    bias = torch.zeros(4, N, D, device=dev, requires_grad=True)

    def run_cudnn():
        y, _ = lstm(x)
        y.sum().backward()

    def run_triton():
        out, _ = flashrnn(proj(x).view(B, T, 4, N, D), R, bias, function="lstm", backend="triton")
        out[0].sum().backward()

    times = time_contenders({"triton": run_triton, "cudnn": run_cudnn}, warmup=1,
                            repeats=repeats)  # fmt: skip
    report.add_timings(times, baseline="cudnn", case="gpu lstm vs cuDNN LSTM", T=T, D=D)
    summary["gpu_lstm_vs_cudnn"] = ratio(times["cudnn"], times["triton"])
    return summary


def plot_sweep(sweep, out: Path, D: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    by_t = sorted((t, o, v) for t, d, o, v in sweep if d == D)
    by_d = sorted((d, o, v) for t, d, o, v in sweep if t == 256)
    for ax, rows, label in [(axes[0], by_t, f"T (D={D})"), (axes[1], by_d, "D (T=256)")]:
        xs = [r[0] for r in rows]
        ax.plot(xs, [r[1] for r in rows], "o-", label="ours (C++ fused)")
        ax.plot(xs, [r[2] for r in rows], "s--", label="flashrnn vanilla_fwbw")
        ax.set_xlabel(label)
        ax.set_ylabel("fwd+bwd seconds")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.legend()
    fig.suptitle("LSTM, B=16, N=4, fp32, 2 CPU threads")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "rnn_sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
