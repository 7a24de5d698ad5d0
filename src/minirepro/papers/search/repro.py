"""Reproduction of "Transformers Struggle to Learn to Search" at CPU scale.

Per seed: a model trained on the balanced distribution and one trained on the naive
distribution at the base input size, both evaluated on balanced test sets of every
lookahead; models at every size of `sweep_sizes` at the base width and at `wide_factor`
times the width; and the reachability probe on the balanced base model. Training jobs run
in `workers` single-threaded processes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace

from minirepro.core.results import AtLeast, AtMost, Result, RunDir
from minirepro.core.threads import num_threads
from minirepro.papers.search.experiments import Job, run_job
from minirepro.papers.search.figures import plot_accuracy, plot_probe, plot_sweep
from minirepro.papers.search.model import EMBEDDINGS
from minirepro.papers.search.probe import radius_growth
from minirepro.papers.search.train import SearchTrainConfig
from minirepro.tasks.dag_search import SearchVocab

__all__ = ["CLAIMS", "PRESETS", "Config", "make_jobs", "results", "run"]

CLAIMS = [
    "Balanced-trained model is accurate at every lookahead (criterion: >= 90% at each)",
    "Naive-trained model fails at the largest lookahead (criterion: < 60%)",
    "Accuracy falls as the input graph grows (base width; criterion: drop >= 5 points)",
    "Doubling the width does not fix it (criterion: drop still >= 5 points)",
    "Reachable radius per layer grows geometrically (criterion: x2 per layer)",
    "The generator streams faster than training consumes (criterion: >= 1x)",
]


@dataclass
class Config:
    """One reproduction run.

    Attributes:
        seeds: Training seeds (model init and data stream).
        max_input_size: Base input size (tokens); n_ids = (size - 5) // 3 vertices.
        sweep_sizes: Input sizes of the size sweep (the base size may be one of them).
        n_layer, d_model, n_head, embedding: The model ("1 head per layer", one-hot input,
            as the reference).
        wide_factor: The sweep's second width is d_model * wide_factor.
        steps, batch_size, lr: Optimisation of every run (fresh examples every step).
        sweep_steps: Steps of the sweep runs (None: `steps`).
        eval_examples: Test examples per lookahead.
        probe_examples: Examples in each of the probe's fit and test sets.
        probe_threshold: Recall defining the reachable radius.
        workers: Parallel single-threaded training processes (1: in this process, with
            one torch thread: models this small run many times slower on two threads of a
            busy machine).
    """

    seeds: tuple[int, ...] = (0, 1)
    max_input_size: int = 20
    sweep_sizes: tuple[int, ...] = (20, 26)
    n_layer: int = 4
    d_model: int = 64
    n_head: int = 1
    embedding: str = "onehot"
    wide_factor: int = 2
    steps: int = 2500
    sweep_steps: int | None = 600
    batch_size: int = 32
    lr: float = 2e-3
    eval_examples: int = 400
    probe_examples: int = 300
    probe_threshold: float = 0.9
    workers: int = 2

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"unknown embedding {self.embedding!r}; choose one of {EMBEDDINGS}")
        for size in (self.max_input_size, *self.sweep_sizes):
            SearchVocab(size)
        if len(set(self.sweep_sizes)) < 2:
            raise ValueError(f"sweep_sizes needs >= 2 distinct sizes, got {self.sweep_sizes}")
        if self.wide_factor < 1 or self.workers < 1:
            raise ValueError("wide_factor and workers must be >= 1")
        need = max(self.sweep_sizes + (self.max_input_size,))
        if self.embedding == "onehot" and self.d_model < need + SearchVocab(need).vocab_size:
            raise ValueError(
                f"embedding='onehot' needs d_model >= vocab_size + input size = "
                f"{need + SearchVocab(need).vocab_size} for size {need}, got {self.d_model}"
            )

    def train_config(self, **kw) -> SearchTrainConfig:
        base = SearchTrainConfig(
            max_input_size=self.max_input_size, n_layer=self.n_layer, d_model=self.d_model,
            n_head=self.n_head, embedding=self.embedding, steps=self.steps,
            batch_size=self.batch_size, lr=self.lr, warmup_steps=max(1, self.steps // 20),
        )  # fmt: skip
        return replace(base, **kw)


PRESETS = {
    # seconds: checks the pipeline, not the claims
    "smoke": Config(
        seeds=(0,), max_input_size=17, sweep_sizes=(17, 20), d_model=48, n_layer=2, steps=20,
        sweep_steps=None,
        batch_size=16, eval_examples=40, probe_examples=40, workers=1,
    ),
    # <= 5 minutes on 2 quiet cores: 5-vertex graphs (lookahead <= 2) for the balanced/naive
    # comparison and the probe; the sweep adds 7-vertex graphs (lookahead <= 3) on a
    # shorter budget
    "quick": Config(),
    # closer to the paper (input size 32-50 ... 6 layers; the paper trains far longer)
    "full": Config(
        seeds=(0, 1, 2), max_input_size=32, sweep_sizes=(23, 32, 41, 50), n_layer=6,
        d_model=128, steps=40000, batch_size=128, lr=1e-3, eval_examples=1000,
        probe_examples=1000,
    ),
}  # fmt: skip


def make_jobs(cfg: Config) -> list[Job]:
    """The training jobs of a run (the balanced base run also serves the sweep when the
    sweep trains as long). Longest first, so the worker pool finishes together."""
    kw = dict(eval_examples=cfg.eval_examples, probe_threshold=cfg.probe_threshold)
    jobs = []
    sweep_steps = cfg.sweep_steps or cfg.steps
    for seed in cfg.seeds:
        jobs.append(
            Job("main", cfg.train_config(seed=seed), probe_examples=cfg.probe_examples, **kw)
        )
        jobs.append(Job("naive", cfg.train_config(seed=seed, distribution="naive"), **kw))
        for size in cfg.sweep_sizes:
            for width in (cfg.d_model, cfg.d_model * cfg.wide_factor):
                if size == cfg.max_input_size and width == cfg.d_model and sweep_steps == cfg.steps:
                    continue  # the main run
                t = cfg.train_config(
                    seed=seed,
                    max_input_size=size,
                    d_model=width,
                    steps=sweep_steps,
                    warmup_steps=max(1, sweep_steps // 20),
                )
                jobs.append(Job("sweep", t, **kw))
    cost = lambda j: j.train.steps * j.train.d_model * j.train.max_input_size  # noqa: E731
    return sorted(jobs, key=cost, reverse=True)  # fmt: skip


def _map(fn: Callable, jobs: list[Job], workers: int, out: RunDir):
    if workers == 1:
        with num_threads(1):
            yield from out.track(map(fn, jobs), "training runs", total=len(jobs))
        return
    from concurrent.futures import as_completed

    from minirepro.papers.jacobian import process_pool

    with process_pool(workers) as pool:
        futures = [pool.submit(fn, job) for job in jobs]
        yield from out.track((f.result() for f in as_completed(futures)), "training runs",
                             total=len(jobs))  # fmt: skip


def run(cfg: Config, out: RunDir) -> list[Result]:
    """Trains every job, logs each summary and checks the claims."""
    rows = []
    for row in _map(run_job, make_jobs(cfg), cfg.workers, out):
        out.log(**row)
        rows.append(row)
    out.savefig(plot_accuracy(rows), "accuracy_by_lookahead")
    out.savefig(plot_sweep(rows, cfg), "accuracy_vs_size")
    out.savefig(plot_probe([r for r in rows if r["role"] == "main"]), "probe_reachable_radius")
    return results(cfg, rows)


def _mean(xs):
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.fmean(xs) if xs else math.nan


def _sweep_acc(rows: list[dict], cfg: Config, seed: int, size: int, width: int) -> float:
    for r in rows:
        if r["role"] in ("main", "sweep") and r["seed"] == seed and r["distribution"] == "balanced" \
                and r["max_input_size"] == size and r["d_model"] == width:  # fmt: skip
            if r["role"] == "main" and (cfg.sweep_steps or cfg.steps) != cfg.steps:
                continue
            return r["acc_balanced"]
    return math.nan


def results(cfg: Config, rows: list[dict]) -> list[Result]:
    """Results from the job summaries (`experiments.run_job`)."""
    seeds = list(cfg.seeds)
    main = {r["seed"]: r for r in rows if r["role"] == "main"}
    naive = {r["seed"]: r for r in rows if r["role"] == "naive"}
    top = SearchVocab(cfg.max_input_size).max_lookahead
    bal_min = [min(main[s]["acc_by_lookahead"].values()) for s in seeds]
    naive_top = [naive[s]["acc_by_lookahead"][top] for s in seeds]
    fmt = lambda d: ", ".join(f"L={k}: {v:.2f}" for k, v in d.items())  # noqa: E731
    small, large = min(cfg.sweep_sizes), max(cfg.sweep_sizes)
    widths = (cfg.d_model, cfg.d_model * cfg.wide_factor)
    acc = {
        (size, w): [_sweep_acc(rows, cfg, s, size, w) for s in seeds]
        for size in cfg.sweep_sizes for w in widths
    }  # fmt: skip
    drop = {w: [100 * (a - b) for a, b in zip(acc[(small, w)], acc[(large, w)])] for w in widths}
    sweep_note = "; ".join(
        f"d_model={w}: " + ", ".join(f"size {z}: {_mean(acc[(z, w)]):.2f}" for z in sorted(cfg.sweep_sizes))
        for w in widths
    )  # fmt: skip
    growth, radii = [], []
    for s in seeds:
        p = main[s]["probe"]
        growth.append(radius_growth(p["radius"], p["max_distance"]))
        radii.append(p["radius"])
    stream = [main[s]["gen_examples_per_s"] / (main[s]["train_steps_per_s"] * main[s]["batch_size"])
              for s in seeds]  # fmt: skip
    scale = f"input size {cfg.max_input_size}, {cfg.n_layer} layers, d_model {cfg.d_model}, {cfg.steps} steps x {cfg.batch_size}"
    return [
        Result.check(
            CLAIMS[0], "~100% at every lookahead (input size 41-50)", bal_min, AtLeast(0.9), seeds,
            unit="min accuracy over lookaheads",
            note=f"{scale}; mean per lookahead: {fmt(_avg_by_la(main, seeds))}",
        ),
        Result.check(
            CLAIMS[1], "fails on large lookaheads", naive_top, AtMost(0.6), seeds,
            unit=f"accuracy at lookahead {top}",
            note=f"naive-trained, same budget; per lookahead: {fmt(_avg_by_la(naive, seeds))}",
        ),
        Result.check(
            CLAIMS[2], "training loss/accuracy worsens with input size", drop[widths[0]],
            AtLeast(5.0), seeds, unit=f"points (size {small} -> {large})", note=sweep_note,
        ),
        Result.check(
            CLAIMS[3], "larger models do not help", drop[widths[1]], AtLeast(5.0), seeds,
            unit=f"points (size {small} -> {large}, d_model {widths[1]})", note=sweep_note,
        ),
        Result.check(
            CLAIMS[4], "reach ~2^layer (path-merging)", growth, AtLeast(2.0), seeds,
            unit="x per layer", note=f"radius per layer (layer 0 = embedding): {radii}; "
            f"threshold recall {cfg.probe_threshold}",
        ),
        Result.check(
            CLAIMS[5], "n/a (the reference generates in C++)", stream, AtLeast(1.0), seeds,
            unit="x", note=", ".join(
                f"seed {s}: {main[s]['gen_examples_per_s']:.0f} examples/s generated vs "
                f"{main[s]['train_steps_per_s']:.1f} steps/s x {main[s]['batch_size']}" for s in seeds),
        ),
    ]  # fmt: skip


def _avg_by_la(by_seed: dict[int, dict], seeds: list[int]) -> dict[int, float]:
    keys = by_seed[seeds[0]]["acc_by_lookahead"].keys()
    return {k: _mean([by_seed[s]["acc_by_lookahead"][k] for s in seeds]) for k in keys}
