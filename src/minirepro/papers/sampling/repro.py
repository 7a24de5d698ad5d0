"""Reproduction of "Smaller, Weaker, Yet Better" (compute-optimal sampling) at CPU scale.

1. Three core decoders are pretrained on error-free iGSM solutions: a stronger-expensive SE,
   a weaker-cheaper WC (fewer parameters), and a student (a third, briefly trained decoder);
   the size-gap sweep adds WC models of other sizes.
2. Per seed, SE samples ``k_se`` solutions per training problem; each WC model samples
   until its measured cost (2 · params · generated tokens) reaches SE's. Coverage,
   diversity and the exact false-positive rate (step checker) of each dataset are recorded.
3. The answer-filtered datasets finetune (same steps each): the student (knowledge
   distillation), WC (WC self-improvement vs distillation from SE) and SE (weak-to-strong vs
   SE self-improvement); each finetuned model solves held-out problems greedily, checked
   step by step.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import astuple, dataclass

from minirepro.core.results import AtLeast, Result, RunDir
from minirepro.core.threads import num_threads, process_pool
from minirepro.core.tokenizer import WordTokenizer
from minirepro.papers.retry import build_tokenizer, score, solve
from minirepro.papers.retry.repro import gen_config
from minirepro.papers.sampling.budget import matched_samples
from minirepro.papers.sampling.dataset import SampledData, build_dataset, igsm_sampler
from minirepro.papers.sampling.finetune import ModelSpec, TrainSpec, build_model, finetune, pretrain
from minirepro.tasks.igsm import Problem, generate

__all__ = ["CLAIMS", "PRESETS", "SETUPS", "Config", "run"]

CLAIMS = [
    "At matched sampling FLOPs, WC data cover more problems than SE data (coverage@k)",
    "At matched sampling FLOPs, WC data have more unique correct solutions (diversity@k)",
    "WC data have a higher false-positive rate (right answer, wrong reasoning)",
    "Finetuning on WC data beats SE data: knowledge distillation (student)",
    "Finetuning on WC data beats SE data: WC self-improvement vs distillation from SE",
    "Finetuning on WC data beats SE data: weak-to-strong (SE) vs SE self-improvement",
    "WC data >= SE data in at least 2 of the 3 finetuning setups",
    "Size-gap sweep: WC coverage >= SE at every WC size (matched FLOPs)",
]

# setup -> the model finetuned; each is finetuned once on WC data and once on SE data
SETUPS = {"knowledge distillation": "student", "WC self-improvement": "WC", "weak-to-strong": "SE"}

Size = tuple[int, int, int]  # (d_model, n_layer, n_head)


@dataclass
class Config:
    """One reproduction run.

    Attributes:
        seeds: Seeds of the sampling and the finetuning (the generators are trained once).
        data_seed: Seed of the pretraining, sampling and test problems (disjoint streams).
        ops: (min, max) op of every problem (pretraining, sampling and test).
        max_edge, n_layer, width, mod, symbol_method, perm_level, whole_names: The iGSM task
            (`minirepro.tasks.igsm.GenConfig`, `minirepro.papers.retry.build_tokenizer`).
        se, wc, student: Model sizes (d_model, n_layer, n_head).
        sweep: More WC sizes for the size-gap sweep (the main WC is always in it).
        pretrain_steps: Steps of WC, SE and the sweep models on error-free data.
        student_steps: Steps of the student (a weaker base, like the paper's Gemma-7B).
        batch_size, seq_len, lr, warmup_steps: Pretraining rows and optimiser.
        n_sample: Training problems the generators sample solutions for.
        k_se: SE samples per problem; WC gets as many as SE's measured FLOPs buy.
        temperature: Sampling temperature (the paper: 0.7).
        sample_batch: Sequences decoded at once (tiny models: bigger batches cost about the
            same per step, so fewer, larger batches are faster).
        finetune_steps, finetune_lr: Finetuning, equal for every dataset.
        n_test: Held-out test problems.
        max_new_tokens: Longest sampled solution (None: 1.5 x the longest correct one).
        threads: torch threads here (sampling); each worker uses 1.
        workers: Models trained at once in spawned processes.
    """

    seeds: tuple[int, ...] = (0, 1)
    data_seed: int = 1234
    ops: tuple[int, int] = (1, 2)
    max_edge: int = 3
    n_layer: tuple[int, int] = (2, 2)
    width: tuple[int, int] = (2, 2)
    mod: int = 7
    symbol_method: str = "seq"
    perm_level: int | None = 6
    whole_names: bool = True
    se: Size = (64, 2, 4)
    wc: Size = (32, 2, 2)
    student: Size = (32, 2, 2)
    sweep: tuple[Size, ...] = ()
    pretrain_steps: int = 3000
    student_steps: int = 2000
    batch_size: int = 2
    seq_len: int = 384
    lr: float = 1e-2
    warmup_steps: int = 30
    n_sample: int = 200
    k_se: int = 4
    temperature: float = 0.7
    sample_batch: int = 1024
    finetune_steps: int = 400
    finetune_lr: float = 1e-3
    n_test: int = 200
    max_new_tokens: int | None = None
    threads: int | None = None
    workers: int = 1

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if not 0 <= self.ops[0] <= self.ops[1]:
            raise ValueError(f"ops must be (min, max) with 0 <= min <= max, got {self.ops}")
        for name in ("se", "wc", "student"):
            ModelSpec(name, *getattr(self, name))  # validates the size
        for size in self.sweep:
            ModelSpec("sweep", *size)
        if _params(self.wc) >= _params(self.se):
            raise ValueError(f"wc {self.wc} must be smaller than se {self.se}")
        for name in ("pretrain_steps", "student_steps", "finetune_steps", "n_sample", "k_se",
                     "n_test", "workers"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 to sample, got {self.temperature}")


def _params(size: Size, vocab: int = 0) -> int:
    """Rough parameter count of a size (for validation; the run counts the real ones)."""
    d, n, _ = size
    return n * 12 * d * d + vocab * d


PRESETS = {
    # seconds: tiny models, a few steps; checks the pipeline, not the claim
    "smoke": Config(
        se=(32, 1, 2), wc=(16, 1, 2), student=(16, 1, 2), sweep=((24, 1, 2),), pretrain_steps=4,
        student_steps=2, batch_size=2, seq_len=192, n_sample=4, k_se=2, finetune_steps=3,
        n_test=4, max_new_tokens=30, warmup_steps=1,
    ),
    # <= 5 minutes on 2 cores (see NOTES.md for where the time goes)
    "quick": Config(sweep=((48, 2, 4),), threads=2, workers=2),
    # closer to the paper: larger models, more problems and samples, three seeds
    "full": Config(
        seeds=(0, 1, 2), ops=(1, 4), max_edge=6, se=(128, 4, 4), wc=(64, 2, 4),
        student=(64, 2, 4), sweep=((48, 2, 4), (96, 3, 4)), pretrain_steps=8000,
        student_steps=3000, n_sample=1000, k_se=8, finetune_steps=2000, n_test=500,
        threads=2, workers=2,
    ),
}  # fmt: skip


def _pretrain_job(
    cfg: Config,
    spec: ModelSpec,
    steps: int,
    tok: WordTokenizer,
    max_seq_len: int,
    tests: list[Problem],
    max_new: int,
) -> tuple[dict, float, float, float, int]:
    """Pretrain one generator and solve the test set (in a worker): (state dict, final loss,
    training seconds, greedy accuracy, parameters; tied embeddings counted once)."""
    t0 = time.perf_counter()
    gen = gen_config(cfg, cfg.ops)
    pool = (generate(gen, cfg.data_seed, i) for i in itertools.count())
    tspec = TrainSpec(steps, cfg.batch_size, cfg.lr, cfg.warmup_steps, cfg.seq_len, seed=0)
    model, loss = pretrain(spec, tok, pool, tspec, max_seq_len)
    seconds = time.perf_counter() - t0
    return (
        model.state_dict(),
        loss,
        seconds,
        _accuracy(model, tok, tests, max_new),
        model.num_params(),
    )


def _sample_job(
    cfg: Config,
    spec: ModelSpec,
    state: dict,
    tok: WordTokenizer,
    max_seq_len: int,
    prompts: list[Problem],
    max_new: int,
    seed: int,
    k: int | None,
    flops: float | None,
    first: int,
) -> tuple[SampledData, int, float]:
    """Sample, judge and filter one generator's dataset (in a worker): (data, parameters,
    seconds)."""
    t0 = time.perf_counter()
    model = _load(spec, state, tok, max_seq_len)
    sampler = igsm_sampler(model, tok, max_new, seed=seed, batch_size=cfg.sample_batch)
    data = build_dataset(sampler, prompts, cfg.temperature, k=k, flops=flops, first=first)
    return data, sampler.n_params, time.perf_counter() - t0


def _finetune_job(
    cfg: Config,
    spec: ModelSpec,
    state: dict,
    tok: WordTokenizer,
    pairs: list[tuple[Problem, str]],
    seed: int,
    max_seq_len: int,
    tests: list[Problem],
    max_new: int,
) -> tuple[float, float, float]:
    """Finetune a generator on sampled pairs and solve the test set (in a worker):
    (accuracy, final loss, seconds)."""
    t0 = time.perf_counter()
    model = _load(spec, state, tok, max_seq_len)
    steps = cfg.finetune_steps
    tspec = TrainSpec(steps, cfg.batch_size, cfg.finetune_lr, min(cfg.warmup_steps, steps // 10),
                      cfg.seq_len, seed=seed)  # fmt: skip
    if pairs:
        model, loss = finetune(model, tok, pairs, tspec)
    else:  # no answer-correct sample to learn from: the model stays as it was
        loss = math.nan
    acc = _accuracy(model, tok, tests, max_new)
    return acc, loss, time.perf_counter() - t0


def _load(spec: ModelSpec, state: dict, tok: WordTokenizer, max_seq_len: int):
    model = build_model(spec, tok.vocab_size, max_seq_len, seed=0)
    model.load_state_dict(state)
    return model


def _accuracy(model, tok: WordTokenizer, tests: list[Problem], max_new: int) -> float:
    """Share of test problems solved greedily with every step right (the step checker)."""
    return score(tests, solve(model, tok, tests, max_new, documents=True))[0].accuracy


def _pool(cfg: Config):
    return contextlib.nullcontext(None) if cfg.workers == 1 else process_pool(cfg.workers, 1)


def _map(pool, fn, jobs: list[tuple]) -> list:
    if pool is None:
        with num_threads(1):
            return [fn(*job) for job in jobs]
    return list(pool.map(fn, *zip(*jobs)))


def run(cfg: Config, out: RunDir) -> list[Result]:
    """Train the generators, sample at matched FLOPs, finetune in the three setups, and
    check the claims."""
    with num_threads(cfg.threads):
        return _run(cfg, out)


def _run(cfg: Config, out: RunDir) -> list[Result]:
    t0 = time.perf_counter()
    gen = gen_config(cfg, cfg.ops)
    tests = [generate(gen, cfg.data_seed + 1, i) for i in range(cfg.n_test)]
    prompts = [generate(gen, cfg.data_seed + 2, i) for i in range(cfg.n_sample)]
    tok = build_tokenizer(tests + prompts, mod=cfg.mod, whole_names=cfg.whole_names)
    longest_prompt = max(len(tok.encode(p.text)) + 2 for p in tests + prompts)
    longest = max(len(tok.encode(p.solution)) + 1 for p in tests + prompts)
    max_new = cfg.max_new_tokens or int(1.5 * longest)
    max_seq_len = max(cfg.seq_len, longest_prompt + max_new)
    specs = {"SE": ModelSpec("SE", *cfg.se), "WC": ModelSpec("WC", *cfg.wc),
             "student": ModelSpec("student", *cfg.student)}  # fmt: skip
    sweep = [ModelSpec(f"WC d={d} L={n}", d, n, h) for d, n, h in cfg.sweep if (d, n, h) != cfg.wc]
    names = [*specs, *(s.name for s in sweep)]
    specs |= {s.name: s for s in sweep}
    steps = {n: cfg.student_steps if n == "student" else cfg.pretrain_steps for n in names}
    out.log(stage="data", vocab_size=tok.vocab_size, max_new_tokens=max_new,
            seconds=time.perf_counter() - t0)  # fmt: skip
    with _pool(cfg) as pool:
        # longest first, so that two workers finish together (steps x rough size)
        order = sorted(names, key=lambda n: -steps[n] * _params(astuple(specs[n])[1:]))
        jobs = [(cfg, specs[n], steps[n], tok, max_seq_len, tests, max_new) for n in order]
        trained = dict(zip(order, out.track(_map(pool, _pretrain_job, jobs), "pretrain")))
        base_acc = {n: trained[n][3] for n in names}
        n_params = {n: trained[n][4] for n in names}
        for n in names:
            out.log(stage="pretrain", model=n, params=n_params[n], final_loss=trained[n][1],
                    seconds=trained[n][2], greedy_accuracy=base_acc[n])  # fmt: skip
        data = _sample(cfg, out, pool, specs, trained, tok, max_seq_len, prompts, max_new, n_params)
        jobs, keys = [], []
        for seed in cfg.seeds:
            for setup, who in SETUPS.items():
                for source in ("WC", "SE"):
                    keys.append((seed, setup, source))
                    jobs.append((cfg, specs[who], trained[who][0], tok, data[seed][source].pairs,
                                 seed, max_seq_len, tests, max_new))  # fmt: skip
        tuned = dict(zip(keys, out.track(_map(pool, _finetune_job, jobs), "finetune", len(jobs))))
    for (seed, setup, source), (acc, loss, sec) in tuned.items():
        out.log(stage="finetune", seed=seed, setup=setup, data=source, model=SETUPS[setup],
                accuracy=acc, base_accuracy=base_acc[SETUPS[setup]], final_loss=loss, seconds=sec)  # fmt: skip
    out.log(stage="done", seconds=time.perf_counter() - t0)
    return _results(cfg, data, tuned, base_acc, [s.name for s in sweep])


def _sample(cfg, out, pool, specs, trained, tok, max_seq_len, prompts, max_new, n_params):
    """Per seed, SE samples k_se per problem; then every WC model (main and sweep) samples
    to SE's measured FLOPs of that seed. Returns {seed: {model: SampledData}}."""
    common = (tok, max_seq_len, prompts, max_new)
    jobs = [(cfg, specs["SE"], trained["SE"][0], *common, s, cfg.k_se, None, 1) for s in cfg.seeds]
    se = dict(zip(cfg.seeds, _map(pool, _sample_job, jobs)))
    wcs = [n for n in specs if n.startswith("WC")]
    jobs, keys = [], []
    for seed in cfg.seeds:
        for n in wcs:
            # first round: 80% of the paper's S_WC = (P_SE / P_WC) * S_SE; then measured
            first = max(1, int(0.8 * matched_samples(n_params["SE"], n_params[n], cfg.k_se)))
            keys.append((seed, n))
            jobs.append(
                (
                    cfg,
                    specs[n],
                    trained[n][0],
                    *common,
                    seed,
                    None,
                    se[seed][0].sampled.flops,
                    first,
                )
            )
    wc = dict(zip(keys, _map(pool, _sample_job, jobs)))
    got: dict[int, dict[str, SampledData]] = {s: {} for s in cfg.seeds}
    for (seed, n), result in [*(((s, "SE"), r) for s, r in se.items()), *wc.items()]:
        d, params, seconds = result
        got[seed][n] = d
        st = d.stats
        out.log(stage="sample", seed=seed, model=n, params=params, k=d.sampled.k,
                tokens=d.sampled.tokens, flops=d.sampled.flops,
                flops_ratio=d.sampled.flops / se[seed][0].sampled.flops, coverage=st.coverage,
                diversity=st.diversity, fpr=st.fpr, sample_accuracy=st.accuracy, kept=st.n_kept,
                seconds=seconds)  # fmt: skip
    return got


def _results(cfg: Config, data, tuned, base_acc, sweep_names: list[str]) -> list[Result]:
    seeds = list(cfg.seeds)

    def diff(stat: str, wc: str = "WC") -> list[float]:
        pairs = [
            (getattr(data[s][wc].stats, stat), getattr(data[s]["SE"].stats, stat)) for s in seeds
        ]
        return [_compared(a, b) for a, b in pairs]

    def mean(xs) -> float:
        return sum(xs) / len(xs)

    def both(stat: str) -> str:
        return (f"WC {mean([getattr(data[s]['WC'].stats, stat) for s in seeds]):.3f} vs SE "
                f"{mean([getattr(data[s]['SE'].stats, stat) for s in seeds]):.3f}")  # fmt: skip

    k_wc = mean([data[s]["WC"].sampled.k for s in seeds])
    ratio = mean([data[s]["WC"].sampled.flops / data[s]["SE"].sampled.flops for s in seeds])
    budget = (f"{cfg.n_sample} problems, SE k={cfg.k_se}, WC k={k_wc:g} at {ratio:.3f}x SE's "
              f"measured FLOPs; T={cfg.temperature:g}")  # fmt: skip
    fpr = diff("fpr")
    results = [
        Result.check(CLAIMS[0], "WC > SE (MATH: 11% higher coverage@k at the low budget)",
                     diff("coverage"), AtLeast(0.0), seeds, unit="coverage (WC - SE)",
                     note=f"{both('coverage')}; {budget}"),
        Result.check(CLAIMS[1], "WC > SE (MATH: 86% higher diversity)", diff("diversity"),
                     AtLeast(1e-9), seeds, unit="unique correct solutions per problem (WC - SE)",
                     note=both("diversity")),
        Result.check(CLAIMS[2], "WC > SE (MATH: 7% higher FPR, by a judge model)",
                     fpr, AtLeast(1e-9), seeds, unit="FPR (WC - SE)",
                     note=f"{both('fpr')}; exact, by the iGSM step checker; NaN where a dataset has "
                          "no answer-correct sample"),
    ]  # fmt: skip
    wins, gains = [], {}
    for i, (setup, who) in enumerate(SETUPS.items()):
        d = [_compared(tuned[(s, setup, "WC")][0], tuned[(s, setup, "SE")][0]) for s in seeds]
        wc_acc = mean([tuned[(s, setup, "WC")][0] for s in seeds])
        se_acc = mean([tuned[(s, setup, "SE")][0] for s in seeds])
        gains[setup] = (wc_acc - se_acc) / se_acc if se_acc > 0 else math.nan
        wins.append(d)
        results.append(Result.check(
            CLAIMS[3 + i], "WC data better (relative gains up to 31.6% across setups)", d,
            AtLeast(0.0), seeds, unit="test accuracy (WC data - SE data)",  # NaN where both solve nothing
            note=f"{who} finetuned {cfg.finetune_steps} steps: WC data {wc_acc:.3f} vs SE data "
                 f"{se_acc:.3f} (before finetuning {base_acc[who]:.3f}); relative gain "
                 f"{gains[setup]:+.1%}; accuracy = every step right (checker)",
        ))  # fmt: skip
    per_seed = [sum(w[j] >= 0 for w in wins) for j in range(len(seeds))]  # NaN >= 0: False
    rel = ", ".join(f"{k}: {v:+.1%}" for k, v in gains.items())
    results.append(Result.check(
        CLAIMS[6], "3 of 3 (up to +31.6% relative)", per_seed, AtLeast(2.0), seeds,
        unit="setups where WC data >= SE data", note=f"relative gains (mean over seeds): {rel}",
    ))  # fmt: skip
    sweep = ["WC", *sweep_names]
    cells = [
        [data[s][n].stats.coverage >= data[s]["SE"].stats.coverage for n in sweep] for s in seeds
    ]
    table = "; ".join(
        f"{n}: k={mean([data[s][n].sampled.k for s in seeds]):g}, coverage {_both_of(data, seeds, n, 'coverage')}, "
        f"diversity {_both_of(data, seeds, n, 'diversity')}, FPR {_both_of(data, seeds, n, 'fpr')}"
        for n in sweep
    )
    results.append(Result.check(
        CLAIMS[7], "WC >= SE at each gap (Gemma2 9B vs 27B; Gemini Flash vs Pro)",
        [sum(c) / len(c) for c in cells], AtLeast(1.0), seeds,
        unit="share of WC sizes with coverage >= SE", note=f"vs SE: {table}",
    ))  # fmt: skip
    return results


def _compared(wc: float, se: float) -> float:
    """wc - se; NaN (never a pass) when both are 0 (or NaN): 0 against 0 compares nothing."""
    return wc - se if (wc or se) and not (math.isnan(wc) or math.isnan(se)) else math.nan


def _both_of(data, seeds, name: str, stat: str) -> str:
    """'wc/se' means over seeds of one statistic."""
    a = sum(getattr(data[s][name].stats, stat) for s in seeds) / len(seeds)
    b = sum(getattr(data[s]["SE"].stats, stat) for s in seeds) / len(seeds)
    return f"{a:.3f}/{b:.3f}"
