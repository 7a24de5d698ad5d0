"""GenRM at CPU scale: best-of-N on last-letter concatenation and word sorting.

Per task and seed: a tiny generator is trained on correct solutions of short problems; it
samples solutions to training problems, which (with programmatic wrong solutions) become
balanced verification data; four verifiers start from the generator's weights (standing in
for the paper's pretrained LM) and train on the same pairs: GenRM with lambda = 0 and with
lambda > 0, GenRM-CoT (lambda > 0) and the discriminative RM. The generator then samples
``n_max`` solutions to each longer test problem and every verifier ranks them; best-of-N,
self-consistency, coverage and pass@1 are read from the same samples. SmolLM2-135M-Instruct
judges the first ``judge_n`` samples of the first ``judge_problems`` test problems.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from minirepro.core.results import AtLeast, Result, RunDir
from minirepro.core.threads import num_threads
from minirepro.papers.genrm.bestofn import (
    best_of_n,
    coverage,
    pass_at_1,
    self_consistency,
)
from minirepro.papers.genrm.data import verification_data
from minirepro.papers.genrm.formats import WordFormat
from minirepro.papers.genrm.training import (
    LMConfig,
    train_discriminative,
    train_generator,
    train_genrm,
)
from minirepro.papers.genrm.verifiers import (
    DiscriminativeRM,
    GenRM,
    GenRMCoT,
    llm_judge,
    sample_solutions,
)
from minirepro.tasks.algorithmic import Solution, Task, get_task, load_words

__all__ = ["CLAIMS", "PRESETS", "VERIFIERS", "Config", "run"]

CLAIMS = [
    "At N=32 on held-out lengths: GenRM-CoT >= GenRM >= discriminative RM > pass@1",
    "Best-of-32 with GenRM-CoT lifts accuracy well above pass@1",
    "GenRM-CoT's best-of-32 improves with more verification rationales K (1 -> max K)",
    "Unified training (lambda > 0) vs lambda = 0 for direct GenRM (best-of-32)",
    "A trained GenRM beats an untrained LLM-as-judge (SmolLM2-135M-Instruct) on the same items",
]
VERIFIERS = ("genrm_cot", "genrm", "genrm_lambda0", "discriminative")
# An "improvement" must be at least one point of accuracy: two verifiers that both pick no
# right solution (0 = 0) do not confirm that one helps.
GAIN = 0.01


@dataclass
class Config:
    """One reproduction run.

    Attributes:
        tasks: Task names (`minirepro.tasks.algorithmic.get_task`).
        seeds: Model seeds; data are fixed by data_seed.
        data_seed: Seed of the word subset, problems, corruptions and rationale slips.
        n_words: Words drawn from the word list (`load_words`); each is one token.
        train_words, test_words: (min, max) words per training / test problem (the paper
            trains on short lists and tests on longer ones).
        n_train: Short training problems: the generator's SFT data and the verifiers' pairs.
        n_train_long: Problems of the test lengths added to the generator's data only (a
            tiny model that never saw a long list never solves one, so without them there is
            nothing to verify; NOTES.md). The verifiers never see a long problem.
        shared_generator: Train one generator per task (seed ``data_seed``) for all seeds,
            which then vary the verifiers and all sampling (saves the quick preset's time).
        n_verify: Short problems whose generator samples join the verification data.
        verify_samples: Generator samples per verification problem.
        n_corrupt: Programmatic wrong solutions per training problem.
        p_slip: Chance of a misjudged step mark in a training rationale.
        n_test: Test problems per task.
        n_max: Samples per test problem (best-of-N uses N <= n_max).
        ns: The N of the best-of-N curve.
        ks: The K of the GenRM-CoT curve (max K is sampled once, prefixes averaged).
        temperature: Generator sampling temperature.
        lam: lambda of the unified loss ("lambda > 0" runs).
        d_model, n_layer, n_head: The decoder every model shares (verifiers start from the
            generator's weights).
        batch_size: Training batch.
        gen_steps, gen_lr: Generator SFT.
        ver_steps, ver_lr: Each verifier's training.
        judge_problems, judge_n: LLM-as-judge items (0 problems: no judge).
        threads: torch intra-op threads (None leaves the setting).
    """

    tasks: tuple[str, ...] = ("last_letter", "word_sort")
    seeds: tuple[int, ...] = (0, 1)
    data_seed: int = 1234
    n_words: int = 100
    train_words: tuple[int, int] = (2, 4)
    test_words: tuple[int, int] = (5, 6)
    n_train: int = 1800
    n_train_long: int = 200
    shared_generator: bool = False
    n_verify: int = 200
    verify_samples: int = 4
    n_corrupt: int = 1
    p_slip: float = 0.1
    n_test: int = 32
    n_max: int = 32
    ns: tuple[int, ...] = (1, 4, 16, 32)
    ks: tuple[int, ...] = (1, 2, 4, 8)
    temperature: float = 1.0
    lam: float = 1.0
    d_model: int = 64
    n_layer: int = 2
    n_head: int = 4
    batch_size: int = 32
    gen_steps: int = 1000
    gen_lr: float = 3e-3
    ver_steps: int = 300
    ver_lr: float = 3e-3
    judge_problems: int = 4
    judge_n: int = 8
    threads: int | None = None

    def __post_init__(self) -> None:
        if not self.seeds or not self.tasks:
            raise ValueError("seeds and tasks must not be empty")
        if not self.ns or max(self.ns) > self.n_max or min(self.ns) < 1:
            raise ValueError(f"ns must lie in [1, n_max={self.n_max}], got {self.ns}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be >= 1, got {self.ks}")
        if not 0 <= self.n_verify <= self.n_train or min(self.n_train, self.n_test) < 1:
            raise ValueError("need n_train, n_test >= 1 and 0 <= n_verify <= n_train")
        if not 0 <= self.judge_problems <= self.n_test or not 1 <= self.judge_n <= self.n_max:
            raise ValueError("need 0 <= judge_problems <= n_test and 1 <= judge_n <= n_max")
        if self.lam <= 0:
            raise ValueError(f"lam is the lambda > 0 of the unified runs, got {self.lam}")


PRESETS = {
    # seconds: the pipeline, not the claims; no judge (the tests load SmolLM2 apart)
    "smoke": Config(
        tasks=("last_letter",), seeds=(0,), n_train=64, n_train_long=8, n_verify=16, verify_samples=2,
        n_test=4, n_max=4, ns=(1, 4), ks=(1, 2), judge_problems=0, judge_n=4,
        d_model=32, n_layer=1, n_head=2, batch_size=8, gen_steps=4, ver_steps=4, threads=1,
    ),
    "quick": Config(shared_generator=True, threads=1),
    "full": Config(
        seeds=(0, 1, 2), n_train=20000, n_verify=2000, verify_samples=8, n_test=200,
        ks=(1, 2, 4, 8, 16, 32), judge_problems=20, judge_n=32,
        d_model=128, n_layer=4, gen_steps=3000, gen_lr=1e-3, ver_steps=2000, ver_lr=1e-3,
    ),
}  # fmt: skip


def run(cfg: Config, out: RunDir) -> list[Result]:
    """Train, sample, verify, and check the claims (module docstring)."""
    with num_threads(cfg.threads):
        words = load_words()
        if cfg.n_words < len(words):
            words = sorted(random.Random(cfg.data_seed).sample(words, cfg.n_words))
        per_task = {name: _run_task(cfg, get_task(name, words), out) for name in cfg.tasks}
    return _results(cfg, per_task)


def _max_len(cfg: Config) -> int:
    """A token budget for a test solution or rationale: at most 5 tokens per word (last
    letter: ``w : l |`` and the answer's letter), with slack for a model that rambles."""
    return 6 * cfg.test_words[1] + 8


def _run_task(cfg: Config, task: Task, out: RunDir) -> dict[str, Any]:
    fmt = WordFormat(task.words)
    train_p = task.problems(cfg.n_train, cfg.train_words, cfg.data_seed)
    long_p = task.problems(cfg.n_train_long, cfg.test_words, cfg.data_seed + 2)
    test_p = task.problems(cfg.n_test, cfg.test_words, cfg.data_seed + 1)
    sol_examples = [fmt.solution_example(p, task.solve(p).text) for p in [*train_p, *long_p]]
    budget = _max_len(cfg)
    seq_len = 2 * budget + cfg.test_words[1] + 8
    sizes = {"d_model": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
             "batch_size": cfg.batch_size, "max_seq_len": seq_len}  # fmt: skip
    gen_cfg = LMConfig(steps=cfg.gen_steps, lr=cfg.gen_lr, **sizes)
    ver_cfg = LMConfig(steps=cfg.ver_steps, lr=cfg.ver_lr, **sizes)
    metrics: dict[str, Any] = {}
    gen = None
    for seed in out.track(list(cfg.seeds), f"{task.name}: seeds"):
        t0 = time.perf_counter()
        if gen is None or not cfg.shared_generator:
            gen_seed = cfg.data_seed if cfg.shared_generator else seed
            gen, hist = train_generator(sol_examples, fmt.vocab_size, fmt.pad_id, gen_cfg, gen_seed)
        vprobs = train_p[: cfg.n_verify]
        vsamples = sample_solutions(gen, fmt, vprobs, cfg.verify_samples, temperature=cfg.temperature,
                                    max_new_tokens=budget, seed=seed) if cfg.verify_samples else None  # fmt: skip
        data = verification_data(task, fmt, train_p, [*(vsamples or []), *[[]] * (len(train_p) - len(vprobs))],
                                 cfg.data_seed + seed, cfg.n_corrupt, cfg.p_slip)  # fmt: skip
        out.log(stage="generator", task=task.name, seed=seed, loss=hist[-1]["loss"],
                n_pairs=len(data.pairs), n_cot=len(data.cot), seconds=time.perf_counter() - t0)  # fmt: skip
        models: dict[str, Any] = {}
        for name, lam, examples in (
            ("genrm_lambda0", 0.0, data.direct),
            ("genrm", cfg.lam, data.direct),
            ("genrm_cot", cfg.lam, data.cot),
        ):
            t1 = time.perf_counter()
            m, h = train_genrm(
                gen, examples, data.correct_solutions, lam, fmt.pad_id, ver_cfg, seed
            )
            models[name] = m
            out.log(stage="verifier", task=task.name, seed=seed, verifier=name,
                    loss=h[-1]["loss"], seconds=time.perf_counter() - t1)  # fmt: skip
        t1 = time.perf_counter()
        disc, h = train_discriminative(
            gen, [fmt.direct_ids(x.problem, x.solution) for x in data.pairs],
            [x.correct for x in data.pairs], fmt.pad_id, ver_cfg, seed,
        )  # fmt: skip
        out.log(stage="verifier", task=task.name, seed=seed, verifier="discriminative",
                loss=h[-1]["loss"], seconds=time.perf_counter() - t1)  # fmt: skip

        t1 = time.perf_counter()
        samples = sample_solutions(gen, fmt, test_p, cfg.n_max, temperature=cfg.temperature,
                                   max_new_tokens=budget, seed=seed)  # fmt: skip
        correct = np.array(
            [[task.is_correct(p, s) for s in row] for p, row in zip(test_p, samples)]
        )
        answers = [[task.answer_of(Solution.parse(s).steps) for s in row] for row in samples]
        pairs = [(p, s) for p, row in zip(test_p, samples) for s in row]
        shape = correct.shape
        scores = {
            "genrm": GenRM(models["genrm"], fmt).score(pairs).view(shape).numpy(),
            "genrm_lambda0": GenRM(models["genrm_lambda0"], fmt).score(pairs).view(shape).numpy(),
            "discriminative": DiscriminativeRM(disc, fmt).score(pairs).view(shape).numpy(),
        }
        cot = GenRMCoT(models["genrm_cot"], fmt, max_rationale=budget)
        per_rat = cot.scores_per_rationale(pairs, max(cfg.ks), seed).numpy()  # (P * n_max, K)
        by_k = {k: per_rat[:, :k].mean(1).reshape(shape) for k in cfg.ks}
        scores["genrm_cot"] = by_k[max(cfg.ks)]
        m = {
            "pass@1": pass_at_1(correct),
            "coverage": {n: coverage(correct, n) for n in cfg.ns},
            "self_consistency": {n: self_consistency(answers, correct, n) for n in cfg.ns},
            **{v: {n: best_of_n(scores[v], correct, n) for n in cfg.ns} for v in VERIFIERS},
            "cot_k": {k: best_of_n(by_k[k], correct, max(cfg.ns)) for k in cfg.ks},
            "verify_acc": {v: float(((scores[v] > 0.5) == correct).mean()) for v in VERIFIERS},
        }
        if cfg.judge_problems:
            m["judge"] = _judge(cfg, task, test_p, samples, correct, scores, seed)
        out.log(stage="eval", task=task.name, seed=seed, seconds=time.perf_counter() - t1,
                example=samples[0][0], **_flat(m))  # fmt: skip
        metrics[seed] = m
    return metrics


_PRETRAINED: dict[str, Any] = {}


def _judge(cfg, task, test_p, samples, correct, scores, seed) -> dict[str, float]:
    """Best-of-judge_n of SmolLM2 as judge vs the trained verifiers on the same items."""
    from minirepro.core.pretrained import load_smollm2

    if "smollm2" not in _PRETRAINED:
        _PRETRAINED["smollm2"] = load_smollm2()
    judge = llm_judge(_PRETRAINED["smollm2"], task)
    n = cfg.judge_n
    # problems where the choice matters: some of the first n samples right, some wrong
    mixed = [i for i in range(len(test_p)) if 0 < correct[i, :n].sum() < n]
    rows = (mixed or list(range(len(test_p))))[: cfg.judge_problems]
    pairs = [(test_p[i], s) for i in rows for s in samples[i][:n]]
    judged = judge.score(pairs).view(len(rows), n).numpy()
    c = correct[rows, :n]
    out = {"judge": best_of_n(judged, c, n), "pass@1": pass_at_1(c), "coverage": coverage(c, n),
           "n_items": len(rows), "n_mixed": len(mixed)}  # fmt: skip
    out |= {v: best_of_n(scores[v][rows, :n], c, n) for v in VERIFIERS}
    out["judge_verify_acc"] = float(((judged > 0.5) == c).mean())
    return out


def _flat(m: dict[str, Any], prefix: str = "") -> dict[str, float]:
    flat = {}
    for k, v in m.items():
        if isinstance(v, dict):
            flat |= _flat(v, f"{prefix}{k}/")
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def _avg(per_task: dict[str, dict[int, dict]], seed: int, *keys) -> float:
    """The mean over tasks of metric ``keys`` for one seed."""
    vals = []
    for metrics in per_task.values():
        v = metrics[seed]
        for k in keys:
            v = v[k]
        vals.append(v)
    return float(np.mean(vals))


def _results(cfg: Config, per_task: dict[str, dict[int, dict]]) -> list[Result]:
    seeds = list(cfg.seeds)
    N = max(cfg.ns)
    K = max(cfg.ks)

    def bo(v: str, n: int = N) -> list[float]:
        return [_avg(per_task, s, v, n) for s in seeds]

    p1 = [_avg(per_task, s, "pass@1") for s in seeds]
    cot, gen, gen0, disc = bo("genrm_cot"), bo("genrm"), bo("genrm_lambda0"), bo("discriminative")
    # ties allowed where the claim says >=; discriminative > pass@1 must hold by a point
    margin = [min(a - b, b - c, c - d - GAIN) for a, b, c, d in zip(cot, gen, disc, p1)]

    def mean(xs: list[float]) -> str:
        return f"{100 * np.mean(xs):.1f}"

    table = "; ".join(
        f"{v} " + "/".join(mean(bo(v, n)) for n in cfg.ns)
        for v in (*VERIFIERS, "self_consistency", "coverage")
    )
    per = "; ".join(
        f"{t}: pass@1 {100 * np.mean([m[s]['pass@1'] for s in seeds]):.1f}, "
        + ", ".join(f"{v} {100 * np.mean([m[s][v][N] for s in seeds]):.1f}" for v in VERIFIERS)
        + f", coverage {100 * np.mean([m[s]['coverage'][N] for s in seeds]):.1f}"
        for t, m in per_task.items()
    )
    where = (
        f"mean over {', '.join(cfg.tasks)}; train {cfg.train_words[0]}-{cfg.train_words[1]} words, "
        f"test {cfg.test_words[0]}-{cfg.test_words[1]}; {cfg.n_test} test problems x {cfg.n_max} samples"
    )
    results = [
        Result.check(
            CLAIMS[0], "GenRM-CoT > GenRM > discriminative > pass@1 (Fig. 1)", margin,
            AtLeast(0.0), seeds, unit="accuracy",
            note=f"min(CoT - GenRM, GenRM - disc, disc - pass@1 - {GAIN}) at N={N} ({where}); best-of-N (%) at N={'/'.join(map(str, cfg.ns))}: "
            f"{table}; pass@1 {mean(p1)}; per task at N={N}: {per}",
        ),
        Result.check(
            CLAIMS[1], "5% -> 45.3% (algorithmic tasks, best-of-32)",
            [c - p for c, p in zip(cot, p1)], AtLeast(0.05), seeds, unit="accuracy",
            note=f"best-of-{N} GenRM-CoT - pass@1; here {mean(p1)}% -> {mean(cot)}% (coverage@{N} {mean(bo('coverage'))}%)",
        ),
        Result.check(
            CLAIMS[2], "accuracy rises with the number of votes (Fig. 6)",
            [_avg(per_task, s, "cot_k", K) - _avg(per_task, s, "cot_k", min(cfg.ks)) for s in seeds],
            AtLeast(GAIN), seeds, unit="accuracy",
            note=f"best-of-{N} by K: " + ", ".join(
                f"K={k} {100 * np.mean([_avg(per_task, s, 'cot_k', k) for s in seeds]):.1f}" for k in cfg.ks),
        ),
        Result.check(
            CLAIMS[3], "unified training helps verification (Fig. 7)",
            [a - b for a, b in zip(gen, gen0)], AtLeast(GAIN), seeds, unit="accuracy",
            note=f"best-of-{N}: lambda={cfg.lam:g} {mean(gen)}%, lambda=0 {mean(gen0)}%; "
            "verification accuracy at 0.5: " + ", ".join(
                f"{v} {100 * np.mean([_avg(per_task, s, 'verify_acc', v) for s in seeds]):.1f}" for v in VERIFIERS),
        ),
    ]  # fmt: skip
    if cfg.judge_problems:
        j = [_avg(per_task, s, "judge", "judge") for s in seeds]
        g = [_avg(per_task, s, "judge", "genrm") for s in seeds]
        results.append(
            Result.check(
                CLAIMS[4], "GenRM > LLM-as-a-Judge (Fig. 1)", [a - b for a, b in zip(g, j)],
                AtLeast(GAIN), seeds, unit="accuracy",
                note=f"best-of-{cfg.judge_n} on the first {cfg.judge_problems} test problems per task whose first {cfg.judge_n} samples are neither all right nor all wrong: "
                f"GenRM {mean(g)}%, SmolLM2 judge {mean(j)}%, pass@1 {mean([_avg(per_task, s, 'judge', 'pass@1') for s in seeds])}%, "
                f"coverage {mean([_avg(per_task, s, 'judge', 'coverage') for s in seeds])}%; judge's p(Yes) > 0.5 accuracy "
                f"{mean([_avg(per_task, s, 'judge', 'judge_verify_acc') for s in seeds])}%",
            )
        )  # fmt: skip
    return results
