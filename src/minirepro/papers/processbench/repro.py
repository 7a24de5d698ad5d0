"""ProcessBench at CPU scale: a synthetic process-error benchmark from iGSM and three kinds
of evaluator.

Per run: training records (op ``train_ops``), a calibration subset (easy ops; the paper
calibrates PRM thresholds on GSM8K) and the test benchmark, an "igsm-easy" and an
"igsm-hard" subset by op, written as ``benchmark.jsonl`` in the reference format. For each
seed a PRM (process labels) and an outcome verifier (final-answer labels only) of the same
shape are trained on the same records, calibrated, and scored per subset; the real
SmolLM2-135M-Instruct critiques the first ``n_critic`` records of each subset greedily and
the first ``n_vote`` by a majority vote of ``vote_samples`` samples.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from minirepro.core.results import AtLeast, Result, RunDir
from minirepro.core.threads import num_threads
from minirepro.papers.processbench.metric import Report, score
from minirepro.papers.processbench.records import Record, write_records
from minirepro.papers.processbench.synthetic import SynthConfig, easy_hard, synthetic_records
from minirepro.papers.processbench.verifier import (
    VerifierConfig,
    build_tokenizer,
    encode_record,
    train_verifier,
)

__all__ = ["CLAIMS", "PRESETS", "Config", "fac_accuracy", "run"]

CLAIMS = [
    "A trained PRM's F1 drops from easy to hard problems",
    "An outcome-only verifier misses errors in solutions whose final answer is right; a PRM "
    "finds them",
    "A general LLM prompted as a critic beats the trained PRM (here: SmolLM2-135M-Instruct)",
]
EASY, HARD = "igsm-easy", "igsm-hard"


@dataclass
class Config:
    """One reproduction run.

    Attributes:
        seeds: Verifier seeds (initialisation and batch order); data are fixed by data_seed.
        data_seed: Seed of every record.
        n_train: Training records ("train on op <= some bound").
        train_ops: (min, max) op of training problems.
        n_calib: Calibration records (easy ops, drawn apart from the test records).
        n_test: Records per test subset.
        easy_ops: (min, max) op of the easy subset.
        hard_ops: (min, max) op of the hard subset (beyond training, as Olympiad problems
            are beyond the GSM8K/MATH-level data PRMs are trained on).
        max_edge, n_layer, width: iGSM structure sizes (`SynthConfig`).
        p_error: Share of records with an injected error.
        p_propagate: Chance that an arithmetic or dependency error propagates.
        d_model, n_layer_model, n_head: The verifiers' decoder.
        steps, batch_size, lr, warmup_steps: Verifier training.
        precision: Verifier training precision ("auto": bf16 where the CPU has it).
        n_critic: Records per subset the SmolLM2 critic critiques greedily (0: no critic).
        n_vote: Records per subset for the majority vote (0: none).
        vote_samples: Samples per record in the vote (the paper: 8).
        max_new_tokens: The critic's generation budget.
        save_verifiers: Write the trained verifiers to <run>/verifiers/ (for
            `minirepro processbench eval --evaluator prm --model ...`).
        threads: torch intra-op threads (None leaves the setting; 1 is much faster on a
            machine whose cores other jobs keep busy).
    """

    seeds: tuple[int, ...] = (0, 1)
    data_seed: int = 1234
    n_train: int = 2000
    train_ops: tuple[int, int] = (1, 5)
    n_calib: int = 200
    n_test: int = 200
    easy_ops: tuple[int, int] = (2, 3)
    hard_ops: tuple[int, int] = (6, 8)
    max_edge: int = 6
    n_layer: tuple[int, int] = (2, 3)
    width: tuple[int, int] = (2, 3)
    p_error: float = 0.5
    p_propagate: float = 0.5
    d_model: int = 64
    n_layer_model: int = 2
    n_head: int = 4
    steps: int = 400
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 40
    precision: str = "auto"
    n_critic: int = 8
    n_vote: int = 0
    vote_samples: int = 8
    max_new_tokens: int = 128
    save_verifiers: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        for name in ("train_ops", "easy_ops", "hard_ops"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"{name} must be (min, max) with 1 <= min <= max")
        if min(self.n_train, self.n_calib, self.n_test, self.steps) < 1:
            raise ValueError("n_train, n_calib, n_test and steps must be >= 1")
        if not 0 <= self.n_critic <= self.n_test or not 0 <= self.n_vote <= self.n_test:
            raise ValueError("n_critic and n_vote must lie in [0, n_test]")
        if self.vote_samples < 1:
            raise ValueError(f"vote_samples must be >= 1, got {self.vote_samples}")

    def synth(self, n: int, ops: tuple[int, int]) -> SynthConfig:
        return SynthConfig(
            n=n, min_op=ops[0], max_op=ops[1], p_error=self.p_error,
            p_propagate=self.p_propagate, max_edge=self.max_edge, n_layer=self.n_layer,
            width=self.width,
        )  # fmt: skip

    def verifier(self) -> VerifierConfig:
        return VerifierConfig(
            d_model=self.d_model, n_layer=self.n_layer_model, n_head=self.n_head,
            steps=self.steps, batch_size=self.batch_size, lr=self.lr,
            warmup_steps=self.warmup_steps, precision=self.precision,
        )  # fmt: skip


PRESETS = {
    # seconds: checks the pipeline, not the claims; no critic (the tests load SmolLM2 apart)
    "smoke": Config(
        seeds=(0,), n_train=64, n_calib=16, n_test=16, steps=4, batch_size=4, d_model=32,
        n_layer_model=1, n_head=2, warmup_steps=1, n_critic=0, save_verifiers=False,
    ),
    # the defaults: 2 seeds x (PRM + outcome verifier) of a d=64, 2-layer decoder, 400 steps
    # of 16 records; SmolLM2 critiques 8 records per subset greedily (NOTES.md: time)
    # one torch thread: d=64 matmuls gain little from a second thread, and on a machine
    # whose cores other jobs keep busy two threads ran 2-4x slower (NOTES.md)
    "quick": Config(threads=1),
    # closer to the paper: more data, larger verifiers, the critic on every record with
    # the paper's 8-sample vote
    "full": Config(
        seeds=(0, 1, 2), n_train=20000, n_calib=400, n_test=1000, steps=4000, batch_size=32,
        d_model=256, n_layer_model=6, n_head=8, lr=1e-3, warmup_steps=200,
        n_critic=1000, n_vote=200, max_new_tokens=512,
    ),
}  # fmt: skip


def fac_accuracy(records: list[Record], predictions: list[int | None]) -> float:
    """Exact-match rate on the error records whose final answer is right (NaN if none)."""
    hits = [
        p == r.label
        for r, p in zip(records, predictions)
        if r.label != -1 and r.final_answer_correct
    ]
    return sum(hits) / len(hits) if hits else math.nan


def run(cfg: Config, out: RunDir) -> list[Result]:
    """Build the benchmark, train and score the verifiers, run the critic, check claims."""
    with num_threads(cfg.threads):
        return _run(cfg, out)


def _run(cfg: Config, out: RunDir) -> list[Result]:
    t0 = time.perf_counter()
    train_recs = synthetic_records(cfg.synth(cfg.n_train, cfg.train_ops), cfg.data_seed, "train")
    calib = synthetic_records(cfg.synth(cfg.n_calib, cfg.easy_ops), cfg.data_seed, "calib")
    test = easy_hard(cfg.synth(cfg.n_test, cfg.easy_ops), cfg.data_seed, cfg.easy_ops, cfg.hard_ops)
    write_records(test, out.path / "benchmark.jsonl")
    tok = build_tokenizer(train_recs)
    longest = max(len(encode_record(tok, r)[0]) for r in [*calib, *test])
    out.log(stage="data", seconds=time.perf_counter() - t0, vocab_size=tok.vocab_size,
            longest_tokens=longest, **_composition(test))  # fmt: skip

    f1: dict[str, list[Report]] = {"prm": [], "outcome": []}
    fac: dict[str, list[float]] = {"prm": [], "outcome": []}
    prm_preds: list[dict[str, int]] = []  # per seed: record id -> PRM prediction
    runs = [(s, sup) for s in cfg.seeds for sup in ("process", "outcome")]
    for seed, sup in out.track(runs, "train verifiers"):
        t1 = time.perf_counter()
        v, history = train_verifier(train_recs, sup, cfg.verifier(), seed, tok, longest)
        threshold = v.calibrate(calib)
        preds = v.predict(test)
        name = "prm" if sup == "process" else "outcome"
        report = score(test, preds)
        f1[name].append(report)
        fac[name].append(fac_accuracy(test, preds))
        out.log(stage="verifier", evaluator=name, seed=seed, final_loss=history[-1]["loss"],
                threshold=threshold, seconds=time.perf_counter() - t1,
                fac_accuracy=fac[name][-1], **_by_kind(test, preds), **_flat(report))  # fmt: skip
        if cfg.save_verifiers:
            v.save(out.path / "verifiers" / f"{name}-seed{seed}")
        if name == "prm":
            prm_preds.append(dict(zip((r.id for r in test), preds)))
    critic = _critic(cfg, test, out) if cfg.n_critic or cfg.n_vote else None
    if critic is not None and "greedy" in critic:  # the PRM on the records the critic saw
        seen = critic.pop("greedy_records")
        critic["prm_same"] = [score(seen, [p[r.id] for r in seen]) for p in prm_preds]
    out.log(stage="done", seconds=time.perf_counter() - t0)
    return _results(cfg, f1, fac, critic)


def _composition(records: list[Record]) -> dict[str, int]:
    errs = [r for r in records if r.label != -1]
    return {
        "n_test": len(records),
        "n_error": len(errs),
        "n_error_final_answer_correct": sum(r.final_answer_correct for r in errs),
    }


def _by_kind(records: list[Record], predictions: list[int | None]) -> dict[str, float]:
    """Exact-match accuracy on the error records of each kind (synthetic records' meta)."""
    hits: dict[str, list[bool]] = {}
    for r, p in zip(records, predictions):
        kind = r.meta.get("error_kind")
        if r.label != -1 and kind:
            key = f"acc/{kind}{'+propagated' if r.meta.get('propagated') else ''}"
            hits.setdefault(key, []).append(p == r.label)
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}


def _flat(report: Report) -> dict[str, float]:
    out = {"average_f1": report.average_f1}
    for name, s in report.subsets.items():
        out |= {f"{name}/f1": s.f1, f"{name}/acc_error": s.acc_error,
                f"{name}/acc_correct": s.acc_correct}  # fmt: skip
    return out


def _critic(cfg: Config, test: list[Record], out: RunDir) -> dict[str, Any]:
    """Greedy and voted SmolLM2 critiques of the first records of each subset."""
    from minirepro.core.pretrained import load_smollm2
    from minirepro.papers.processbench.critic import Critic

    t1 = time.perf_counter()
    critic = Critic(load_smollm2())
    res: dict[str, Any] = {}
    try:
        for mode, n, samples, prefix in (
            ("greedy", cfg.n_critic, 1, ""),
            ("vote", cfg.n_vote, cfg.vote_samples, ""),
            # a diagnostic, not the paper's protocol: the reply forced to start "\boxed{"
            ("forced", cfg.n_critic, 1, "\\boxed{"),
        ):
            if not n:
                continue
            recs = [r for sub in (EASY, HARD) for r in [x for x in test if x.subset == sub][:n]]
            budget = 8 if prefix else cfg.max_new_tokens
            outs = critic.predict(
                recs, samples, max_tokens=budget, seed=cfg.data_seed, answer_prefix=prefix
            )
            preds = [o.prediction for o in outs]
            report = score(recs, preds)
            answered = sum(s is not None for o in outs for s in o.samples) / (len(outs) * samples)
            res[mode] = report
            res[f"{mode}_records"] = recs
            res[f"{mode}_answered"] = answered
            res[f"{mode}_fac"] = fac_accuracy(recs, preds)
            out.log(stage="critic", mode=mode, n=len(recs), samples=samples, answered=answered,
                    seconds=time.perf_counter() - t1, example=outs[0].critiques[0][:400],
                    **_flat(report))  # fmt: skip
    finally:
        critic.close()
    return res


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _table(name: str, reports: list[Report]) -> str:
    subs = list(reports[0].subsets)
    cells = [f"{s} {100 * _mean([r.subsets[s].f1 for r in reports]):.1f}" for s in subs]
    return (
        f"{name}: " + ", ".join(cells) + f", avg {100 * _mean([r.average_f1 for r in reports]):.1f}"
    )


def _results(
    cfg: Config,
    f1: dict[str, list[Report]],
    fac: dict[str, list[float]],
    critic: dict[str, Any] | None,
) -> list[Result]:
    seeds = list(cfg.seeds)
    table = "; ".join(_table(n, f1[n]) for n in ("prm", "outcome"))
    drop = [r.subsets[EASY].f1 - r.subsets[HARD].f1 for r in f1["prm"]]
    gap = [p - o for p, o in zip(fac["prm"], fac["outcome"])]
    ops = f"easy op {cfg.easy_ops[0]}-{cfg.easy_ops[1]}, hard op {cfg.hard_ops[0]}-{cfg.hard_ops[1]}, train op {cfg.train_ops[0]}-{cfg.train_ops[1]}"
    results = [
        Result.check(
            CLAIMS[0] + f" ({ops})", "PRMs degrade from GSM8K/MATH to OlympiadBench/Omni-MATH",
            drop, AtLeast(0.05), seeds, unit="F1",
            note=f"F1(easy) - F1(hard), threshold by F1 on {cfg.n_calib} easy calibration records; F1 per subset (%): {table}",
        ),
        Result.check(
            CLAIMS[1], "motivation of the paper (no number)", gap, AtLeast(0.10), seeds,
            unit="accuracy",
            note="exact-match accuracy of PRM - outcome verifier on error records with a right final answer; "
            f"PRM {_mean(fac['prm']):.2f}, outcome {_mean(fac['outcome']):.2f}",
        ),
    ]  # fmt: skip
    if critic is not None and "greedy" in critic:
        g = critic["greedy"]
        prm_avg = [r.average_f1 for r in critic["prm_same"]]
        vals = [g.average_f1 - p for p in prm_avg]
        note = (
            f"critic avg F1 - PRM avg F1 on the same {cfg.n_critic} records per subset (greedy; PRM there: {100 * _mean(prm_avg):.1f}); critic F1 (%): "
            + ", ".join(f"{s} {100 * v.f1:.1f} (err {100 * v.acc_error:.0f}, cor {100 * v.acc_correct:.0f})" for s, v in g.subsets.items())
            + f"; answered {100 * critic['greedy_answered']:.0f}% of critiques with a valid \\boxed{{}} index"
        )  # fmt: skip
        if "forced" in critic:
            f = critic["forced"]
            note += (
                f"; reply forced to start with \\boxed{{: avg F1 {100 * f.average_f1:.1f}, "
                f"answered {100 * critic['forced_answered']:.0f}%"
            )
        if "vote" in critic:
            note += f"; vote@{cfg.vote_samples} on {cfg.n_vote}/subset: avg F1 {100 * critic['vote'].average_f1:.1f}"
        results.append(
            Result.check(
                CLAIMS[2], "critics beat PRMs (o1-mini 87.9, QwQ-32B-Preview 71.5 avg F1)",
                vals, AtLeast(0.0), seeds, unit="F1", note=note,
            )
        )  # fmt: skip
    return results
