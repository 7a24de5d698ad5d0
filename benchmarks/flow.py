"""Flow matching on the CPU: our library vs PyPI `flow-matching` (the reference).

Same model (a VelocityMLP on 2D data), same weights, same inputs, same steps for both:

- train step: path sample + velocity MSE + backward + AdamW step (batch 2048, width 128: the
  spec's setting); also the library's own part alone (path sample + loss, no model);
- sampling: midpoint ODE solves (50 steps) of 64, 1024 and 4096 points, euler of 1024;
- likelihood: exact divergence and Hutchinson, euler 20 steps, 1024 points.

Outputs are checked against the reference (<= 1e-5) before anything is timed; contenders are
warmed up, then alternate (A B A B ...), and we report medians and ratios.

    python benchmarks/flow.py                  # a few minutes
    python benchmarks/flow.py --repeats 5      # quicker, noisier
    python benchmarks/flow.py --threads 2

The last line is one JSON document; summary keys (reference time / ours, >= 1 is faster):
    train_step_vs_ref   full training step, batch 2048
    sample_vs_ref       geometric mean over the four sampling cases
    likelihood_vs_ref   geometric mean of exact-divergence and Hutchinson likelihoods
"""

from __future__ import annotations

import argparse
import math
from functools import partial

import torch

from minirepro.core.bench import BenchReport, Timing, paired_ratio, ratio, time_contenders
from minirepro.papers.flow import CondOTPath, ODESolver, standard_normal_log_prob, velocity_mse
from minirepro.papers.flow.data import checkerboard
from minirepro.papers.flow.models import VelocityMLP


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    err = (a - b).abs().max().item()
    assert err <= 1e-5 * max(1.0, b.abs().max().item()), (
        f"{what}: ours differs from the reference by {err}"
    )


def _time_both_orders(fns: dict, repeats: int, warmup: int = 2) -> dict[str, Timing]:
    """Alternating rounds (A B A B ...), half of them in each order (B A B A ...), so that
    running first or second in a round favours neither contender."""
    first = time_contenders(fns, warmup=warmup, repeats=(repeats + 1) // 2)
    second = time_contenders(dict(reversed(list(fns.items()))), warmup=0, repeats=repeats // 2)
    return {k: Timing(k, first[k].times + second[k].times) for k in fns}


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _model(width: int, seed: int = 0) -> VelocityMLP:
    torch.manual_seed(seed)
    return VelocityMLP(2, width, 4, time_features=0)


def bench_train(report: BenchReport, repeats: int, batch: int = 2048, width: int = 128) -> dict:
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler

    g = torch.Generator().manual_seed(0)
    x0, x1, t = (
        torch.randn(batch, 2, generator=g),
        checkerboard(batch, g),
        torch.rand(batch, generator=g),
    )
    ours_model, ref_model = _model(width), _model(width)
    ours_opt = torch.optim.AdamW(ours_model.parameters(), lr=1e-4)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=1e-4)
    ours_path, ref_path = CondOTPath(), AffineProbPath(CondOTScheduler())

    def ours_loss(model):
        s = ours_path.sample(x0, x1, t)
        return velocity_mse(model(s.x_t, s.t), s.dx_t)

    def ref_loss(model):
        s = ref_path.sample(x_0=x0, x_1=x1, t=t)
        return torch.pow(model(x=s.x_t, t=s.t) - s.dx_t, 2).mean()

    # correctness: the same loss and gradients
    la, lb = ours_loss(ours_model), ref_loss(ref_model)
    _close(la, lb, "train loss")
    ga = torch.autograd.grad(la, list(ours_model.parameters()))
    gb = torch.autograd.grad(lb, list(ref_model.parameters()))
    for a, b in zip(ga, gb):
        _close(a, b, "train gradients")

    def step(model, opt, loss_fn):
        loss = loss_fn(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = _time_both_orders(
        {
            "ours": partial(step, ours_model, ours_opt, ours_loss),
            "reference": partial(step, ref_model, ref_opt, ref_loss),
        },
        repeats=3 * repeats,  # a model-bound step: the two differ by ~1%, so more rounds
    )
    report.add_timings(times, baseline="reference", case="train step", batch=batch, width=width)
    # the library's own part of a step: the path sample and the loss, on a fixed prediction
    pred = torch.randn(batch, 2, generator=g)
    lib = _time_both_orders(
        {
            "ours": lambda: velocity_mse(pred, ours_path.sample(x0, x1, t).dx_t),
            "reference": lambda: torch.pow(
                pred - ref_path.sample(x_0=x0, x_1=x1, t=t).dx_t, 2
            ).mean(),
        },
        repeats=max(repeats, 50),
    )
    report.add_timings(lib, baseline="reference", case="path + loss only", batch=batch, width=0)
    return {
        "train_step_vs_ref": ratio(times["reference"], times["ours"]),
        "train_step_paired_vs_ref": paired_ratio(times["reference"], times["ours"]),
        "path_loss_vs_ref": ratio(lib["reference"], lib["ours"]),
    }


def bench_sample(report: BenchReport, repeats: int, width: int = 128) -> dict:
    from flow_matching.solver import ODESolver as RefODESolver

    model = _model(width).eval()
    out = {}
    for n, method in [(64, "midpoint"), (1024, "midpoint"), (1024, "euler"), (4096, "midpoint")]:
        x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(n))
        ours = partial(ODESolver(model).sample, x0, method=method, step_size=0.02)
        ref = partial(RefODESolver(model).sample, x_init=x0, method=method, step_size=0.02)
        _close(ours(), ref(), f"sample {method} {n}")
        times = _time_both_orders({"ours": ours, "reference": ref}, repeats=repeats)
        report.add_timings(
            times, baseline="reference", case=f"sample {method} 50 steps", batch=n, width=width
        )
        out[f"sample_{method}_{n}_vs_ref"] = ratio(times["reference"], times["ours"])
    out["sample_vs_ref"] = _geomean(list(out.values()))
    return out


def bench_likelihood(report: BenchReport, repeats: int, n: int = 1024, width: int = 128) -> dict:
    from flow_matching.solver import ODESolver as RefODESolver

    model = _model(width).eval()
    x1 = checkerboard(n, torch.Generator().manual_seed(1))
    out = {}
    for exact in (True, False):
        probe = (torch.randn(n, 2, generator=torch.Generator().manual_seed(2)) < 0).float() * 2 - 1

        def ours(exact=exact, probe=probe):
            return ODESolver(model).log_likelihood(
                x1, standard_normal_log_prob, method="euler", step_size=0.05,
                exact_divergence=exact, probe=probe,
            )[1]  # fmt: skip

        def ref(exact=exact):
            torch.manual_seed(3)  # the reference draws its probe from the global RNG
            return RefODESolver(model).compute_likelihood(
                x_1=x1, log_p0=standard_normal_log_prob, method="euler", step_size=0.05,
                exact_divergence=exact,
            )[1]  # fmt: skip

        if exact:
            _close(ours(), ref(), "exact log-likelihood")
        else:  # same probe as the reference's draw
            torch.manual_seed(3)
            ref_probe = (torch.randn_like(x1) < 0) * 2.0 - 1.0
            _close(ours(probe=ref_probe), ref(), "Hutchinson log-likelihood")
        times = _time_both_orders({"ours": ours, "reference": ref}, repeats=repeats)
        name = "exact" if exact else "hutchinson"
        report.add_timings(
            times, baseline="reference", case=f"likelihood {name} 20 steps", batch=n, width=width
        )
        out[f"likelihood_{name}_vs_ref"] = ratio(times["reference"], times["ours"])
    out["likelihood_vs_ref"] = _geomean(list(out.values()))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", default="runs/bench/flow.json")
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch threads; 1 by default: these small MLPs run faster on one (see NOTES.md)",
    )  # fmt: skip
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    report = BenchReport("flow")
    summary = {}
    summary.update(bench_train(report, args.repeats))
    summary.update(bench_sample(report, args.repeats))
    summary.update(bench_likelihood(report, args.repeats))
    keys = ["train_step_vs_ref", "sample_vs_ref", "likelihood_vs_ref"]
    report.set_summary(**{k: summary.pop(k) for k in keys}, **summary)
    report.emit(args.out)


if __name__ == "__main__":
    main()
