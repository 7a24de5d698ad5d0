"""Reproduction of Coconut's ProsQA table with a tiny decoder trained from scratch on the CPU.

For each seed: ProsQA-style training and held-out problems (or a user's ProsQA JSON files),
the five methods trained through the same stages with the same number of steps from the
same initial weights, accuracy and tokens per answer on the held-out problems, and the
BFS analysis of Coconut's thoughts.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from minirepro.core.model import ModelConfig
from minirepro.core.results import AtLeast, AtMost, Result, RunDir
from minirepro.core.threads import num_threads
from minirepro.papers.coconut.analysis import (
    frontier_analysis,
    plot_frontier,
    thought_decode_analysis,
)
from minirepro.papers.coconut.curriculum import (
    METHODS,
    Curriculum,
    build_tokenizer,
    check_method,
    tokenize_record,
)
from minirepro.papers.coconut.evaluate import answer_loss, evaluate
from minirepro.papers.coconut.training import TrainSettings, make_model, train_method
from minirepro.tasks.prosqa import ProsQAConfig, generate_prosqa, load_prosqa

__all__ = ["CLAIMS", "PAPER_ACCURACY", "PRESETS", "Config", "results", "run", "run_job"]

_COST_ORDER = ("no_curriculum", "coconut", "pause", "cot", "no_cot")  # slowest step first

PAPER_ACCURACY = {  # ProsQA, GPT-2 (Table 1)
    "coconut": 97.0, "cot": 77.5, "no_cot": 76.7, "pause": 96.6, "no_curriculum": 76.1,
}  # fmt: skip

CLAIMS = [
    "Coconut beats CoT on ProsQA (criterion: >= +5 points)",
    "Coconut beats No-CoT on ProsQA",
    "Coconut beats Coconut without the curriculum",
    "Pause-as-thought is close to Coconut (the paper's gap: 0.4 points)",
    "Coconut answers with far fewer tokens than CoT",
    "After one thought, switched to language (<eot> Every ___), the model values frontier "
    "concepts above unreachable ones",
    *[f"{m} accuracy on held-out ProsQA is above chance (50%)" for m in METHODS],
]


@dataclass
class Config:
    """One reproduction run.

    Attributes:
        seeds: Seeds: data, initial weights and batches.
        methods: Which of `METHODS` to train (the claims need all five).
        n_train: Generated training problems per seed (the paper: 17,886).
        n_test: Held-out problems per seed ("500 held-out problems").
        n_nodes, n_steps: Graph size and chain length of the generated problems.
        n_layer, n_head, d_model: The core decoder trained from scratch.
        max_latent_stage, c_thought: The curriculum (the paper: 6 and 1).
        steps_per_stage, final_steps: Optimizer steps per stage and at the final stage.
        uniform_prob: The reference's stage mixing (`Curriculum.uniform_prob`); 0 as in
            its main runs.
        lr, batch_size, precision, warmup_steps, min_lr_ratio: Optimisation
            (`TrainSettings`).
        train_path, test_path: The reference's ProsQA JSON files, used instead of
            generated problems when given (``data/prosqa_train.json``, ``..._test.json``).
        threads: torch intra-op threads (None leaves the setting). One by default: the
            matrices are tiny, and a second thread only added synchronisation (0.2 s vs
            0.4-1.0 s per step on a loaded 2-core machine, NOTES.md).
        workers: Processes running the (seed, method) jobs side by side.
    """

    seeds: tuple[int, ...] = (0, 1)
    methods: tuple[str, ...] = METHODS
    n_train: int = 4000
    n_test: int = 500
    n_nodes: tuple[int, int] = (14, 28)
    n_steps: tuple[int, int] = (3, 6)
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    max_latent_stage: int = 6
    c_thought: int = 1
    steps_per_stage: int = 60
    final_steps: int = 120
    uniform_prob: float = 0.0
    lr: float = 2e-3
    batch_size: int = 32
    precision: str = "fp32"
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0
    train_path: str | None = None
    test_path: str | None = None
    threads: int | None = 1
    workers: int = 1

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        for m in self.methods:
            check_method(m)
        if self.n_train < 1 or self.n_test < 1:
            raise ValueError("n_train and n_test must be >= 1")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        self.prosqa()  # validates
        self.curriculum()
        self.settings()

    def prosqa(self) -> ProsQAConfig:
        """The generator's sizes (the paper's node distribution at its own range)."""
        paper = tuple(self.n_nodes) == (14, 28)
        return ProsQAConfig(
            n_nodes=tuple(self.n_nodes), mode_nodes=27 if paper else None,
            n_steps=tuple(self.n_steps),
        )  # fmt: skip

    def curriculum(self) -> Curriculum:
        return Curriculum(
            self.max_latent_stage,
            self.c_thought,
            self.steps_per_stage,
            self.final_steps,
            self.uniform_prob,
        )

    def settings(self) -> TrainSettings:
        return TrainSettings(
            lr=self.lr, batch_size=self.batch_size, precision=self.precision,
            warmup_steps=self.warmup_steps, min_lr_ratio=self.min_lr_ratio,
        )  # fmt: skip


PRESETS = {
    # seconds: small graphs, a few steps per stage; checks the pipeline and that it learns
    "smoke": Config(
        seeds=(0,), n_train=200, n_test=30, n_nodes=(7, 9), n_steps=(2, 3), d_model=32,
        max_latent_stage=2, steps_per_stage=8, final_steps=16, batch_size=16, lr=3e-3,
    ),
    # <= 5 minutes on 2 cores, all five methods x 2 seeds: see NOTES.md for the sizing
    # (d = 32 with 2 heads costs 0.63x a d = 64 step, which buys 2,100 steps instead of 900)
    "quick": Config(
        seeds=(0, 1), n_train=4000, n_test=500, n_nodes=(7, 9), n_steps=(2, 3), n_head=2,
        d_model=32, max_latent_stage=3, steps_per_stage=350, final_steps=700, batch_size=16,
        lr=5e-3, workers=2,
    ),
    # the paper's graphs and curriculum (6 stages); still a small decoder from scratch
    "full": Config(
        seeds=(0, 1, 2), n_train=17886, n_test=500, n_layer=4, d_model=128,
        max_latent_stage=6, steps_per_stage=2800, final_steps=8400, lr=1e-3, workers=2,
    ),
}  # fmt: skip


def load_data(cfg: Config, seed: int) -> tuple[list[dict], list[dict]]:
    """Training and held-out records: the user's files, or generated from the seed."""
    if cfg.train_path or cfg.test_path:
        if not (cfg.train_path and cfg.test_path):
            raise ValueError("give both train_path and test_path, or neither")
        return load_prosqa(cfg.train_path), load_prosqa(cfg.test_path, limit=cfg.n_test)
    train = generate_prosqa(cfg.n_train, seed, cfg.prosqa())
    test = generate_prosqa(cfg.n_test, 100_000 + seed, cfg.prosqa())  # another stream
    seen = {r["question"] for r in train}
    return train, [r for r in test if r["question"] not in seen]


def run(cfg: Config, out: RunDir) -> list[Result]:
    """Train and evaluate every method for every seed; check the claims.

    The (seed, method) jobs run in ``cfg.workers`` processes (spawned, each with
    ``cfg.threads`` threads); their logs are written here, in job order.
    """
    # the multi-pass methods first: the slowest jobs start first, so the workers end together
    order = sorted(cfg.methods, key=lambda m: _COST_ORDER.index(m))
    jobs = [(s, m) for m in order for s in cfg.seeds]
    if cfg.workers > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("spawn")  # no fork after torch started threads
        with ProcessPoolExecutor(min(cfg.workers, len(jobs)), mp_context=ctx) as pool:
            futures = [pool.submit(run_job, cfg, s, m) for s, m in jobs]
            done = out.track((f.result() for f in futures), "jobs", total=len(jobs))
            outputs = list(done)
    else:
        outputs = [run_job(cfg, s, m) for s, m in out.track(jobs, "jobs")]
    rows: dict[int, dict[str, Any]] = {s: {} for s in cfg.seeds}
    for (seed, method), res in zip(jobs, outputs):
        rows[seed][method] = res["metrics"]
        rows[seed]["n_test"] = res["n_test"]
        if "frontier" in res:
            rows[seed]["frontier"] = res["frontier"]
        out.log(**res["log"])
    analyses = [r["frontier"] for r in rows.values() if "frontier" in r]
    if analyses:
        out.savefig(plot_frontier(analyses), "coconut_frontier")
    return results(cfg, rows)


def run_job(cfg: Config, seed: int, method: str) -> dict[str, Any]:
    """One method at one seed: trained, evaluated, and for Coconut the frontier analysis.

    Returns:
        ``metrics`` (accuracy, tokens_per_answer), ``n_test``, ``log`` (a metrics record)
        and, for Coconut, ``frontier``.
    """
    with num_threads(cfg.threads):
        t0 = time.perf_counter()
        train_recs, test_recs = load_data(cfg, seed)
        tok = build_tokenizer(train_recs + test_recs)
        tok_train = [tokenize_record(tok, r) for r in train_recs]
        cur = cfg.curriculum()
        longest = max(len(tok.encode(r["question"])) for r in train_recs + test_recs)
        model_cfg = ModelConfig(
            vocab_size=tok.vocab_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
            d_model=cfg.d_model, max_seq_len=longest + 128,
        )  # fmt: skip
        net = make_model(method, tok, model_cfg, seed=seed)
        loss0 = answer_loss(net, tok, test_recs[:100], method, cur)
        t1 = time.perf_counter()
        hist = train_method(net, tok_train, method, cur, tok, cfg.settings(), seed=seed)
        t2 = time.perf_counter()
        ev = evaluate(net, tok, test_recs, method, cur)
        metrics = {k: ev[k] for k in ("accuracy", "named", "choice_accuracy", "tokens_per_answer")}
        res: dict[str, Any] = {"metrics": metrics, "n_test": len(test_recs)}
        if method == "coconut":
            res["frontier"] = frontier_analysis(net, tok, test_recs, cur)
            res["thought_decode"] = thought_decode_analysis(net, tok, test_recs, cur)
        log = dict(
            seed=seed, method=method, train_s=t2 - t1, eval_s=time.perf_counter() - t2,
            setup_s=t1 - t0, steps=sum(n for _, n in cur.schedule(method)),
            train_loss=hist[-1]["loss"], heldout_loss_untrained=loss0,
            heldout_loss=answer_loss(net, tok, test_recs[:100], method, cur),
            example_output=ev["outputs"][0], **metrics,
        )  # fmt: skip
        extra = {k: res[k] for k in ("frontier", "thought_decode") if k in res}
        res["log"] = {**log, **extra}
        return res


def _vals(rows: dict[int, dict[str, Any]], fn) -> list[float]:
    return [fn(r) for r in rows.values()]


def results(cfg: Config, rows: dict[int, dict[str, Any]]) -> list[Result]:
    """Results from per-seed rows {seed: {method: {accuracy, tokens_per_answer}, ...}}."""
    seeds = list(rows)
    have = set(cfg.methods)
    acc = lambda m: _vals(rows, lambda r: r[m]["accuracy"])  # noqa: E731
    mean = lambda m: statistics.fmean(acc(m))  # noqa: E731
    table = ", ".join(f"{m} {mean(m):.1f}" for m in cfg.methods)
    scale = (
        f"{cfg.n_layer}-layer d={cfg.d_model} decoder from scratch, {cfg.n_train} problems of "
        f"{cfg.n_nodes[0]}-{cfg.n_nodes[1]} nodes, {cfg.max_latent_stage} latent stages"
    )
    out: list[Result] = []

    def gap(claim: int, a: str, b: str, paper: str, crit) -> None:
        if {a, b} <= have:
            vals = [x - y for x, y in zip(acc(a), acc(b))]
            out.append(
                Result.check(
                    CLAIMS[claim],
                    paper,
                    vals,
                    crit,
                    seeds,
                    unit="points",
                    note=f"accuracy %: {table} ({scale})",
                )  # fmt: skip
            )

    gap(0, "coconut", "cot", "+19.5 points (97.0 vs 77.5)", AtLeast(5.0))
    gap(1, "coconut", "no_cot", "+20.3 points (97.0 vs 76.7)", AtLeast(1.0))
    gap(2, "coconut", "no_curriculum", "+20.9 points (97.0 vs 76.1)", AtLeast(5.0))
    if {"coconut", "pause"} <= have:
        vals = [abs(x - y) for x, y in zip(acc("coconut"), acc("pause"))]
        out.append(
            Result.check(
                CLAIMS[3],
                "0.4 points (97.0 vs 96.6)",
                vals,
                AtMost(5.0),
                seeds,
                unit="points",
                note="|Coconut - pause|",
            )  # fmt: skip
        )
    if {"coconut", "cot"} <= have:
        tok_c = _vals(rows, lambda r: r["coconut"]["tokens_per_answer"])
        tok_cot = _vals(rows, lambda r: r["cot"]["tokens_per_answer"])
        out.append(
            Result.check(
                CLAIMS[4],
                "fewer tokens than CoT (Table 1)",
                [a / b for a, b in zip(tok_c, tok_cot)],
                AtMost(0.5),
                seeds,
                unit="x CoT",
                note=f"tokens per answer (thoughts counted): Coconut "
                f"{statistics.fmean(tok_c):.1f}, CoT {statistics.fmean(tok_cot):.1f}",
            )  # fmt: skip
        )
    if "coconut" in have:
        fr = _vals(rows, lambda r: r["frontier"]["mass"]["frontier"][0])
        un = _vals(rows, lambda r: r["frontier"]["mass"]["unreachable"][0])
        pn = _vals(rows, lambda r: r["frontier"]["per_node"]["frontier"][0])
        pu = _vals(rows, lambda r: r["frontier"]["per_node"]["unreachable"][0])
        gd = _vals(rows, lambda r: r["frontier"].get("gold", [float("nan")])[0])
        every = _vals(rows, lambda r: sum(v[0] for v in r["frontier"]["mass"].values()))
        out.append(
            Result.check(
                CLAIMS[5],
                "frontier > unreachable (Figs. 8-9)",
                [100 * (a - b) for a, b in zip(fr, un)],
                AtLeast(0.0),
                seeds,
                unit="points",
                note=f"probability of each concept as the next step's node after 1 thought "
                f"(<eot> Every ___): frontier (depth 1) {statistics.fmean(fr):.3f} vs "
                f"unreachable {statistics.fmean(un):.3f} in total; per concept "
                f"{statistics.fmean(pn):.4f} vs {statistics.fmean(pu):.4f}; the reference "
                f"step's node {statistics.fmean(gd):.3f}; on any concept "
                f"{statistics.fmean(every):.3f}",
            )  # fmt: skip
        )
    for i, m in enumerate(METHODS):
        if m in have:
            tokens = statistics.fmean(_vals(rows, lambda r, m=m: r[m]["tokens_per_answer"]))
            named = _vals(rows, lambda r, m=m: r[m].get("named", float("nan")))
            choice = _vals(rows, lambda r, m=m: r[m].get("choice_accuracy", float("nan")))
            out.append(
                Result.check(
                    CLAIMS[6 + i],
                    PAPER_ACCURACY[m],
                    acc(m),
                    AtLeast(60.0),
                    seeds,
                    unit="%",
                    note=f"criterion: 10 points above chance; names one of the two options in "
                    f"{statistics.fmean(named):.1f}%, of those the right one in "
                    f"{statistics.fmean(choice):.1f}% (50 = guessing); {tokens:.1f} tokens per "
                    f"answer; {rows[seeds[0]]['n_test']} held-out problems",
                )  # fmt: skip
            )
    return out
