"""One training job of the reproduction: train, evaluate by lookahead, probe (optional).

A job is a plain dataclass so that it pickles into a worker process; it returns numbers
only (no model), so the parent process never holds more than the summary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from minirepro.papers.search.evaluate import accuracy, accuracy_by_lookahead
from minirepro.papers.search.probe import layer_states, reachability_probe
from minirepro.papers.search.train import SearchTrainConfig, train_search
from minirepro.tasks.dag_search import generate_batch

__all__ = ["Job", "run_job"]


@dataclass(frozen=True)
class Job:
    """A training run and what to measure on it.

    Attributes:
        role: "main" (balanced, base size), "naive" or "sweep".
        train: The training run.
        eval_examples: Test examples per lookahead.
        probe_examples: Examples for each of the probe's fit and test sets (0: no probe).
        probe_threshold: Recall that defines the reachable radius.
    """

    role: str
    train: SearchTrainConfig
    eval_examples: int = 500
    probe_examples: int = 0
    probe_threshold: float = 0.9


def run_job(job: Job) -> dict:
    """Trains, evaluates and probes; returns a JSON-ready summary."""
    cfg = job.train
    run = train_search(cfg)
    by_la = accuracy_by_lookahead(run.model, cfg.max_input_size, n=job.eval_examples)
    rng = np.random.default_rng(4242)
    mixed = generate_batch(job.eval_examples, cfg.max_input_size, "balanced", rng=rng)
    naive = generate_batch(job.eval_examples, cfg.max_input_size, "naive", rng=rng)
    out = {
        "role": job.role,
        "seed": cfg.seed,
        "distribution": cfg.distribution,
        "max_input_size": cfg.max_input_size,
        "d_model": cfg.d_model,
        "n_params": sum(p.numel() for p in run.model.parameters()),
        "acc_by_lookahead": {int(k): v for k, v in by_la.items()},
        "acc_balanced": accuracy(run.model, mixed),
        "acc_naive": accuracy(run.model, naive),
        "final_loss": run.history[-1]["loss"],
        "gen_examples_per_s": run.gen_examples_per_s,
        "train_steps_per_s": run.train_steps_per_s,
        "batch_size": cfg.batch_size,
        "seconds": run.seconds,
        "config": asdict(cfg),
    }
    if job.probe_examples:
        fit = generate_batch(job.probe_examples, cfg.max_input_size, "balanced", rng=rng)
        test = generate_batch(job.probe_examples, cfg.max_input_size, "balanced", rng=rng)
        p = reachability_probe(
            layer_states(run.model, fit.tokens), fit,
            layer_states(run.model, test.tokens), test,
            cfg.max_input_size, threshold=job.probe_threshold,
        )  # fmt: skip
        out["probe"] = {
            "radius": p.radius.tolist(),
            "recall": np.nan_to_num(p.recall, nan=-1.0).tolist(),
            "false_positive_rate": p.false_positive_rate.tolist(),
            "counts": p.counts.tolist(),
            "max_distance": p.max_distance,
        }
    return out
