"""Reproduction of Phi-4's pivotal token search and DPO at CPU scale, on iGSM.

Per seed (in a worker process of its own): SFT a small decoder on error-free iGSM solutions
(the retry paper's data and packing), sample one solution per search problem and run PTS on
the problems whose baseline p(success) lies in [0.2, 0.8]; re-estimate every pivot with
fresh samples; build single-token DPO pairs at the pivots and, for the same problems and the
same number of pairs, whole-response pairs judged by the checker (stage 2's verifier); DPO
two copies of the SFT policy, one on each; solve held-out problems greedily with all three.
The synthetic-data steps (self-revision and instruction reversal) run on the policy's
failed samples and are counted.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import statistics
import time
from dataclasses import dataclass

from minirepro.core.model import ModelConfig, Transformer
from minirepro.core.results import AtLeast, AtMost, Result, RunDir
from minirepro.core.seed import seed_everything
from minirepro.core.threads import num_threads, process_pool
from minirepro.core.tokenizer import WordTokenizer
from minirepro.core.train import TrainConfig, train
from minirepro.papers.pivotal.dpo import DPOConfig, train_dpo
from minirepro.papers.pivotal.pairs import PreferencePair, pivot_pairs, response_pairs, write_jsonl
from minirepro.papers.pivotal.policy import LMPolicy, igsm_oracle
from minirepro.papers.pivotal.pts import PTSConfig, SuccessEstimator, estimate_bound, pivotal_tokens
from minirepro.papers.pivotal.synthetic import reverse_instruction, self_revise
from minirepro.papers.retry import (
    Variant,
    build_tokenizer,
    document,
    pack_rows,
    prompt_ids,
    score,
    solve,
)
from minirepro.papers.retry.repro import gen_config
from minirepro.tasks.igsm import Problem, generate

__all__ = ["CLAIMS", "PRESETS", "Config", "run"]

CLAIMS = [
    "PTS needs O(log L · pivots) p-estimates per solution, not O(L)",
    "Pivots re-estimated with fresh samples still move p by >= p_gap",
    "DPO on PTS pairs beats the SFT policy",
    "DPO on PTS pairs >= full-response DPO with the same number of pairs",
]


@dataclass
class Config:
    """One reproduction run.

    Attributes:
        seeds: Model (and sampling) seeds; the problems are the same for all.
        data_seed: Seed of the training, search and test problems.
        train_ops: (min, max) op of the SFT problems.
        search_ops: (min, max) op of the problems PTS searches (chosen so that the SFT
            policy's baseline p lies in [p_min, p_max] on enough of them, NOTES.md).
        n_search: Problems sampled for the search (those outside the baseline range are
            skipped, as in the report).
        test_bins: Op ranges of the held-out test problems; accuracy is their mean.
        n_test: Problems per test bin.
        max_edge, n_layer, width, mod, symbol_method, perm_level, whole_names: The iGSM
            task (as the retry paper's quick preset: `minirepro.papers.retry.Config`).
        d_model, n_layer_model, n_head, seq_len, steps, batch_size, lr, warmup_steps: SFT.
        n_samples, p_gap, p_min, p_max, top_k: Search settings (`PTSConfig`: M samples per
            estimate, the jump threshold, the baseline range, alternatives tried per pivot).
        temperature: Sampling temperature of the policy in PTS and stage 2 (below 1 so that
            enough problems have a baseline p in [p_min, p_max], NOTES.md).
        responses_per_query: Responses sampled and searched per query in range (they share
            the query's cache of estimates).
        screen_batch: Queries whose baseline p is sampled in one batch.
        response_samples: Whole responses sampled per problem for stage-2 pairs.
        beta, dpo_steps, dpo_batch_size, dpo_lr: DPO (`DPOConfig`), the same for PTS pairs
            and whole-response pairs.
        max_new_tokens: Longest completion (None: 1.5x the longest reference solution).
        threads: torch threads per model; workers: seeds run at once in spawned processes.
    """

    seeds: tuple[int, ...] = (0, 1)
    data_seed: int = 1234
    train_ops: tuple[int, int] = (1, 2)
    search_ops: tuple[int, int] = (1, 2)
    n_search: int = 200
    test_bins: tuple[tuple[int, int], ...] = ((1, 1), (2, 2))
    n_test: int = 100
    max_edge: int = 3
    n_layer: tuple[int, int] = (2, 2)
    width: tuple[int, int] = (2, 2)
    mod: int = 7
    symbol_method: str = "seq"
    perm_level: int | None = 6
    whole_names: bool = True
    d_model: int = 64
    n_layer_model: int = 2
    n_head: int = 4
    seq_len: int = 384
    steps: int = 3600
    batch_size: int = 2
    lr: float = 1e-2
    warmup_steps: int = 30
    n_samples: int = 32
    p_gap: float = 0.2
    p_min: float = 0.2
    p_max: float = 0.8
    top_k: int = 4
    temperature: float = 0.7
    responses_per_query: int = 4
    screen_batch: int = 16
    response_samples: int = 8
    beta: float = 0.1
    dpo_steps: int = 60
    dpo_batch_size: int = 8
    dpo_lr: float = 3e-5
    max_new_tokens: int | None = None
    threads: int | None = 1
    workers: int = 2

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        ranges = {"train_ops": self.train_ops, "search_ops": self.search_ops}
        ranges |= {f"test_bins[{i}]": b for i, b in enumerate(self.test_bins)}
        for name, r in ranges.items():
            if len(r) != 2 or not 0 <= r[0] <= r[1]:
                raise ValueError(f"{name} must be (min, max) with 0 <= min <= max, got {r}")
        if not self.test_bins:
            raise ValueError("test_bins must not be empty")
        if min(self.n_search, self.n_test, self.steps, self.workers, self.response_samples) < 1:
            raise ValueError("n_search, n_test, steps, workers and response_samples must be >= 1")
        if self.response_samples < 2:
            raise ValueError("response_samples must be >= 2 (a pair needs two responses)")
        if self.responses_per_query < 1 or self.screen_batch < 1:
            raise ValueError("responses_per_query and screen_batch must be >= 1")
        self.pts_config()  # validates the search settings
        self.dpo_config(0)

    def pts_config(self) -> PTSConfig:
        return PTSConfig(self.n_samples, self.p_gap, self.p_min, self.p_max, self.top_k)

    def dpo_config(self, seed: int) -> DPOConfig:
        return DPOConfig(self.beta, self.dpo_steps, self.dpo_batch_size, self.dpo_lr, seed=seed)


PRESETS = {
    # seconds: a tiny model, a few steps; checks the pipeline, not the claims
    "smoke": Config(
        n_search=6, n_test=6, steps=30, d_model=32, n_layer_model=1, n_head=2, seq_len=256,
        n_samples=4, p_min=0.0, p_max=1.0, responses_per_query=1, response_samples=4,
        dpo_steps=4, dpo_batch_size=2, max_new_tokens=40, workers=1,
    ),
    # <= 5 min on 2 cores: retry's quick task and policy (2-layer d=64, 3600 steps), two seeds
    # in two single-threaded workers; baseline p of 200 op 1-2 problems at temperature 0.7
    # (about a tenth lie in [0.2, 0.8]), 4 responses searched per such problem with M=32
    "quick": Config(),
    # closer to the report's protocol: M=32, more problems, longer SFT
    "full": Config(
        seeds=(0, 1, 2), steps=8000, n_search=300, n_test=300, d_model=96, n_layer_model=3,
        n_samples=32, response_samples=16, dpo_steps=300, dpo_batch_size=16,
    ),
}  # fmt: skip


def run(cfg: Config, out: RunDir) -> list[Result]:
    """SFT, search, DPO and evaluate for every seed; check the claims."""
    t0 = time.perf_counter()
    train_gen = gen_config(cfg, cfg.train_ops)
    search = [
        generate(gen_config(cfg, cfg.search_ops), cfg.data_seed + 100, i)
        for i in range(cfg.n_search)
    ]
    tests = [
        [generate(gen_config(cfg, b), cfg.data_seed + 1 + k, i) for i in range(cfg.n_test)]
        for k, b in enumerate(cfg.test_bins)
    ]
    flat = [p for t in tests for p in t] + search
    tok = build_tokenizer(flat, mod=cfg.mod, whole_names=cfg.whole_names)
    max_new = cfg.max_new_tokens or int(1.5 * max(len(tok.encode(p.solution)) + 1 for p in flat))
    longest = max(len(prompt_ids(tok, p)) for p in flat) + max_new
    rng = random.Random(f"{cfg.data_seed}:sft")
    problems = (generate(train_gen, cfg.data_seed, i) for i in range(10**9))
    docs = (document(tok, p, Variant("error-free"), rng) for p in problems)
    x, y, doc_ids, n_docs = pack_rows(docs, cfg.steps * cfg.batch_size, cfg.seq_len, tok.pad_id)
    out.log(stage="data", vocab_size=tok.vocab_size, sft_problems=n_docs, max_new_tokens=max_new,
            seconds=time.perf_counter() - t0)  # fmt: skip
    jobs = [
        (cfg, tok, (x, y, doc_ids), seed, longest, max_new, search, tests) for seed in cfg.seeds
    ]
    with contextlib.ExitStack() as stack:
        if cfg.workers > 1 and len(jobs) > 1:
            pool = stack.enter_context(process_pool(min(cfg.workers, len(jobs)), cfg.threads or 1))
            done = pool.map(_seed_run, *zip(*jobs))
        else:
            stack.enter_context(num_threads(cfg.threads))
            done = (_seed_run(*job) for job in jobs)
        per_seed = list(out.track(done, "sft + pts + dpo", total=len(jobs)))
    for seed, m in zip(cfg.seeds, per_seed):
        pairs = m.pop("pairs")
        write_jsonl(
            pairs,
            out.path / f"pts_pairs_seed{seed}.jsonl",
            lambda ids: tok.decode(list(ids), skip_special=False),
        )
        out.log(stage="seed", seed=seed, **{k: v for k, v in m.items() if k != "solutions"})
        for s in m["solutions"]:
            out.log(stage="search", seed=seed, **s)
    out.log(stage="done", seconds=time.perf_counter() - t0)
    return _results(cfg, per_seed)


def _train_sft(cfg: Config, vocab_size: int, data, seed: int, longest: int) -> Transformer:
    seed_everything(seed)
    mcfg = ModelConfig(
        vocab_size=vocab_size, n_layer=cfg.n_layer_model, n_head=cfg.n_head, d_model=cfg.d_model,
        max_seq_len=max(cfg.seq_len, longest),
    )  # fmt: skip
    model = Transformer(mcfg)
    tcfg = TrainConfig(
        steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, warmup_steps=cfg.warmup_steps,
        weight_decay=0.1, seed=seed, log_every=max(1, cfg.steps // 10),
    )  # fmt: skip
    b = cfg.batch_size
    train(model, tcfg, lambda i, g: tuple(t[i * b : (i + 1) * b] for t in data))
    return model.eval()


def _accuracy(model, tok, tests: list[list[Problem]], max_new: int) -> list[float]:
    flat = [p for t in tests for p in t]
    sols = solve(model, tok, flat, max_new, documents=True)
    out, k = [], 0
    for t in tests:
        out.append(score(t, sols[k : k + len(t)])[0].accuracy)
        k += len(t)
    return out


class _Touched:
    """An estimator that remembers which prefixes a search asked for."""

    def __init__(self, est: SuccessEstimator) -> None:
        self.est, self.keys = est, set()

    def __call__(self, prefix) -> float:
        self.keys.add(tuple(prefix))
        return self.est(prefix)


def _seed_run(
    cfg: Config,
    tok: WordTokenizer,
    data,
    seed: int,
    longest: int,
    max_new: int,
    search: list[Problem],
    tests: list[list[Problem]],
) -> dict:
    """Everything for one seed (runs in a worker; everything it takes pickles)."""
    t0 = time.perf_counter()
    sft = _train_sft(cfg, tok.vocab_size, data, seed, longest)
    t_sft = time.perf_counter() - t0
    pts = cfg.pts_config()
    policy = LMPolicy(sft, tok.eos_id, max_new, cfg.temperature, seed=seed)
    fresh = LMPolicy(sft, tok.eos_id, max_new, cfg.temperature, seed=seed + 7919)
    rng = random.Random(seed)
    pts_pairs: list[PreferencePair] = []
    full_pairs: list[PreferencePair] = []
    solutions, baselines = [], []
    n_pivots = n_confirmed = revisions = reversals = failed = 0
    queries = [prompt_ids(tok, p) for p in search]
    for c in range(0, len(search), cfg.screen_batch):  # baseline p of many queries per batch
        chunk = list(range(c, min(c + cfg.screen_batch, len(search))))
        for k, comps in zip(chunk, policy.sample_batch([queries[k] for k in chunk], cfg.n_samples)):
            est = SuccessEstimator(policy, igsm_oracle(search[k], tok), queries[k], cfg.n_samples)
            baselines.append((k, est, est.record([], comps)))
    for k, est, p0 in baselines:
        if not pts.p_min <= p0 <= pts.p_max:
            continue
        prob, query, oracle = search[k], queries[k], est.oracle
        re_est = SuccessEstimator(fresh, oracle, query, cfg.n_samples)
        for response in policy.sample(query, cfg.responses_per_query):
            seen = _Touched(est)
            pivots = pivotal_tokens(seen, response, pts)
            # prefixes this search needed, whether or not an earlier response sampled them
            solutions.append(dict(length=len(response), pivots=len(pivots), estimates=len(seen.keys),
                                  bound=estimate_bound(len(response), max(1, len(pivots))),
                                  correct=oracle(response)))  # fmt: skip
            pts_pairs += pivot_pairs(est, policy, pivots, pts)
            for pv in pivots:  # fresh samples for both sides of every pivot
                d = re_est([*pv.prefix, pv.token]) - re_est(list(pv.prefix))
                n_pivots += 1
                n_confirmed += d * math.copysign(1, pv.delta) >= pts.p_gap
            if not oracle(response):  # the synthetic-data steps on the policy's failures
                failed += 1
                text = tok.decode(response, skip_special=False)
                revisions += self_revise(prob, text) is not None
                reversals += reverse_instruction(prob, text) is not None
        full_pairs += response_pairs(
            policy, oracle, query, cfg.response_samples, rng, cfg.responses_per_query
        )
    t_pts = time.perf_counter() - t0 - t_sft
    n = min(len(pts_pairs), len(full_pairs))  # the same number of pairs for both
    acc_sft = _accuracy(sft, tok, tests, max_new)
    acc_pts = acc_full = [math.nan] * len(tests)
    if n:
        for which, pairs in (("pts", pts_pairs[:n]), ("full", full_pairs[:n])):
            model = copy.deepcopy(sft)
            train_dpo(model, sft, pairs, cfg.dpo_config(seed), tok.pad_id)
            acc = _accuracy(model, tok, tests, max_new)
            acc_pts, acc_full = (acc, acc_full) if which == "pts" else (acc_pts, acc)
    return dict(
        sft_seconds=t_sft, pts_seconds=t_pts, total_seconds=time.perf_counter() - t0,
        baseline_in_range=sum(pts.p_min <= p <= pts.p_max for _, _, p in baselines),
        baseline_mean=statistics.fmean(p for _, _, p in baselines),
        searched=len(solutions), pivots=n_pivots, confirmed=n_confirmed,
        pts_pairs=len(pts_pairs), full_pairs=len(full_pairs), pairs_used=n,
        acc_sft=acc_sft, acc_pts=acc_pts, acc_full=acc_full,
        failed_samples=failed, revisions=revisions, reversals=reversals,
        solutions=solutions, pairs=pts_pairs,
    )  # fmt: skip


def _results(cfg: Config, per_seed: list[dict]) -> list[Result]:
    seeds = list(cfg.seeds)
    ratio, per_len = [], []
    for m in per_seed:
        sols = m["solutions"]
        ratio.append(
            statistics.fmean(s["estimates"] / s["bound"] for s in sols) if sols else math.nan
        )
        per_len.append(
            statistics.fmean(s["estimates"] / (s["length"] + 1) for s in sols) if sols else math.nan
        )
    confirmed = [m["confirmed"] / m["pivots"] if m["pivots"] else math.nan for m in per_seed]
    mean = lambda a: statistics.fmean(a) if not any(map(math.isnan, a)) else math.nan  # noqa: E731
    sft = [mean(m["acc_sft"]) for m in per_seed]
    pts = [mean(m["acc_pts"]) for m in per_seed]
    full = [mean(m["acc_full"]) for m in per_seed]
    bins = ", ".join(f"op {a}-{b}" for a, b in cfg.test_bins)
    counts = "; ".join(
        f"seed {s}: {m['baseline_in_range']}/{cfg.n_search} problems with baseline p in "
        f"[{cfg.p_min:g}, {cfg.p_max:g}], {m['pivots']} pivots, {m['pts_pairs']} PTS pairs, "
        f"{m['full_pairs']} response pairs, {m['pairs_used']} used each"
        for s, m in zip(seeds, per_seed)
    )
    acc_note = (
        f"mean greedy accuracy over {bins} ({cfg.n_test} problems each): "
        + "; ".join(
            f"seed {s}: SFT {a:.3f}, PTS-DPO {b:.3f}, full-DPO {c:.3f}"
            for s, a, b, c in zip(seeds, sft, pts, full)
        )
        + f"; {counts}"
    )
    return [
        Result.check(
            CLAIMS[0], "O(log L) per pivot (Algorithm 1)", ratio, AtMost(1.25), seeds, unit="x bound",
            note=("mean over searched responses of p-estimates / (2 + max(1, pivots) * ceil(log2 L)); "
                  "p-estimates / (L + 1), the cost of estimating every prefix: "
                  + ", ".join(f"{v:.2f}" for v in per_len)),
        ),
        Result.check(
            CLAIMS[1], "pivots are real (the report's premise)", confirmed, AtLeast(0.8), seeds,
            unit="fraction", note=f"same-sign jump >= p_gap={cfg.p_gap:g} with {cfg.n_samples} fresh samples per side; {counts}",
        ),
        Result.check(
            CLAIMS[2], "MATH 80.4 (Phi-4 after both DPO stages; context, not a target)",
            [b - a for a, b in zip(sft, pts)], AtLeast(0.01), seeds, unit="accuracy", note=acc_note,
        ),
        Result.check(
            CLAIMS[3], "pivotal-token DPO before full-response DPO (report)",
            [b - c for b, c in zip(pts, full)], AtLeast(0.0), seeds, unit="accuracy", note=acc_note,
        ),
    ]  # fmt: skip
