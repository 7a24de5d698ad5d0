"""Reproduction of "Physics of LMs 2.2: how to learn from mistakes" at CPU scale.

For each seed, one small decoder is trained per data variant — error-free, retry at each
rate, retry with the wrong tokens masked, retry_weak — on the same number of tokens (batches
of ``step_tokens`` real tokens of whole documents; retry documents are longer, so a retry
model sees fewer problems, as in the paper). Each model then solves held-out problems greedily, bin by
bin of ``op`` (in distribution and one bin beyond), and every solution is checked step by
step. Results compare the paper's findings with the measured accuracies.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch

from minirepro.core.model import ModelConfig, Transformer
from minirepro.core.results import AtLeast, AtMost, Result, RunDir, Within
from minirepro.core.seed import seed_everything
from minirepro.core.threads import num_threads, process_pool
from minirepro.core.tokenizer import WordTokenizer
from minirepro.core.train import TrainConfig, train
from minirepro.papers.retry.data import Variant, bucket_batches, build_tokenizer, document
from minirepro.papers.retry.evaluate import score, solve
from minirepro.tasks.igsm import GenConfig, Problem, generate

__all__ = ["CLAIMS", "PRESETS", "Config", "run", "variants"]

CLAIMS = [
    "Retry data beats error-free data on the hardest op bin (best rate, same tokens)",
    "Masking the erroneous tokens is unnecessary (masked <= unmasked)",
    "Fake mistakes (retry_weak) work about as well as real ones (retry)",
    "Models trained on retry data rarely retry at inference",
]


@dataclass
class Config:
    """One reproduction run.

    Attributes:
        seeds: Model seeds; data are the same for all (``data_seed``).
        data_seed: Seed of the training and test problems.
        train_ops: (min, max) op of training problems ("train on op <= some bound").
        test_bins: Op ranges evaluated; the last is beyond the training range (the paper
            tests iGSM-med, trained on op <= 15, at op 20 and 23).
        headline_bin: Index into ``test_bins`` of the bin the claims compare models on
            (-1: the last, the hardest). A bin where every model scores 0 compares nothing;
            the quick preset names the hardest bin inside the training range and its Result
            says so (NOTES.md).
        ablation_bin: Index into ``test_bins`` of the bin the masked and retry_weak
            comparisons use (None: ``headline_bin``). The quick preset names op 1, where the
            retry models solve enough problems for a difference to mean something.
        n_test: Problems per test bin.
        max_edge: Sentences per statement (structure-graph edges).
        n_layer: (min, max) layers of the structure graph.
        width: (min, max) items per layer.
        mod: Modulus ("all arithmetic mod 23").
        symbol_method: "rand" (the paper) or "seq" (a, b, c in step order; easier).
        perm_level: Sentence order of the statements (`GenConfig.perm_level`; None draws
            0-6 per problem like the reference, 6 states them in dependency order).
        whole_names: One token per multi-word name (`NameTokenizer`); the paper uses
            GPT-2's tokenizer, which splits them.
        statement_loss: Learn the statements' tokens too (the paper pretrains on whole
            documents); otherwise only the solutions'.
        retry_rates: Rates of the retry variants ("retry_rate 0.1, 0.2, 0.3, 0.5").
        ablation_rate: Rate of the masked and retry_weak variants.
        ablations: Train the masked and retry_weak variants (their claims are NaN, never a
            pass, without them).
        min_accuracy: The masked and retry_weak comparisons count only where the retry
            model at ``ablation_rate`` solves at least this share of the headline bin.
        d_model, n_layer_model, n_head: The decoder (the paper: GPT-2-style, 12 layers).
        step_tokens: Real (non-padding) tokens per training step; every variant trains on
            about steps * step_tokens tokens (`bucket_batches`: one document per row, rows
            of similar length batched together).
        max_len: Longest training document accepted, in tokens.
        documents: Give the model each row's document ids, so the left padding is invisible
            and positions start at 0 at each document (`minirepro.core.documents`).
        precision: `TrainConfig.precision` ("auto": bf16 where the CPU and width pay).
        steps, lr, warmup_steps: Training.
        max_new_tokens: Generation budget per solution (None: 1.5 x the longest correct
            test solution).
        threads: torch intra-op threads (None leaves the setting; 1 in each worker).
        workers: Models trained at once, each in a spawned process of its own
            (`minirepro.core.threads.process_pool`); 1 trains them one after another here.
            On 2 cores two single-threaded workers train 1.5x the steps per second of one
            process with two threads (NOTES.md). Every model is seeded alone, so the results
            do not depend on the schedule, only on each model's thread count.
    """

    seeds: tuple[int, ...] = (0, 1)
    data_seed: int = 1234
    train_ops: tuple[int, int] = (1, 4)
    test_bins: tuple[tuple[int, int], ...] = ((1, 2), (3, 4), (5, 6))
    headline_bin: int = -1
    ablation_bin: int | None = None
    n_test: int = 100
    max_edge: int = 6
    n_layer: tuple[int, int] = (2, 3)
    width: tuple[int, int] = (2, 3)
    mod: int = 23
    symbol_method: Literal["rand", "seq"] = "rand"
    perm_level: int | None = None
    whole_names: bool = False
    statement_loss: bool = False
    retry_rates: tuple[float, ...] = (0.1, 0.3, 0.5)
    ablation_rate: float = 0.5
    ablations: bool = True
    min_accuracy: float = 0.1
    d_model: int = 128
    n_layer_model: int = 4
    n_head: int = 4
    step_tokens: int = 6144
    max_len: int = 1024
    documents: bool = True
    precision: str = "fp32"
    steps: int = 300
    lr: float = 2e-3
    warmup_steps: int = 30
    max_new_tokens: int | None = None
    threads: int | None = None
    workers: int = 1

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        lo, hi = self.train_ops
        if not 0 <= lo <= hi:
            raise ValueError(
                f"train_ops must be (min, max) with 0 <= min <= max, got {self.train_ops}"
            )
        if not self.test_bins or any(a > b for a, b in self.test_bins):
            raise ValueError(f"test_bins must be non-empty (min, max) ranges, got {self.test_bins}")
        for name in ("headline_bin", "ablation_bin"):
            k = getattr(self, name)
            if k is not None and not -len(self.test_bins) <= k < len(self.test_bins):
                raise ValueError(
                    f"{name} {k} is not an index into the {len(self.test_bins)} test_bins"
                )
        if any(not 0 < r <= 1 for r in (*self.retry_rates, self.ablation_rate)):
            raise ValueError("retry rates must lie in (0, 1]")
        if f"retry {self.ablation_rate:g}" not in {f"retry {r:g}" for r in self.retry_rates}:
            raise ValueError(
                f"ablation_rate {self.ablation_rate:g} must be one of retry_rates {self.retry_rates}"
            )
        if min(self.n_test, self.steps, self.workers, self.step_tokens, self.max_len) < 1:
            raise ValueError("n_test, steps, workers, step_tokens and max_len must be >= 1")


def variants(cfg: Config) -> list[Variant]:
    """Error-free, retry at each rate, and (with ``ablations``) masked retry and retry_weak
    at ``ablation_rate``."""
    r = cfg.ablation_rate
    out = [Variant("error-free")]
    out += [Variant(f"retry {rate:g}", rate) for rate in cfg.retry_rates]
    if not cfg.ablations:
        return out
    out += [Variant(f"retry {r:g} masked", r, mask_errors=True)]
    out += [Variant(f"retry_weak {r:g}", r, kind="retry_weak")]
    return out


PRESETS = {
    # seconds: a 2-layer model, a few steps; checks the pipeline, not the claim
    "smoke": Config(
        seeds=(0, 1), n_test=8, steps=4, step_tokens=512, d_model=32, n_layer_model=1,
        n_head=2, max_len=256, train_ops=(1, 2), test_bins=((1, 2), (3, 3)),
        retry_rates=(0.5,), warmup_steps=1, max_new_tokens=48,
    ),
    # <= 5 minutes on 2 cores: all six variants (error-free, retry 0.1 / 0.3 / 0.5, masked and
    # retry_weak at 0.1) x 2 seeds of a 2-layer d=64 decoder, 2400 steps of ~600 real tokens
    # in length-bucketed batches of whole documents, in two single-threaded workers;
    # two-layer, two-item structures with 3 sentences in dependency order, op 1-2, mod 7,
    # one token per name, lr 1e-2. Test op 1, 2 and 3 (300 problems each); the headline
    # compares op 2, the hardest bin inside the training range (op 3 is 0% for every model
    # at this budget), the ablations op 1, where the rate-0.1 models solve >= 10% (NOTES.md)
    "quick": Config(
        steps=2400, step_tokens=600, max_len=512, d_model=64, n_layer_model=2, n_head=4,
        n_layer=(2, 2), width=(2, 2), max_edge=3, perm_level=6, whole_names=True, mod=7,
        train_ops=(1, 2), test_bins=((1, 1), (2, 2), (3, 3)), headline_bin=1, n_test=300,
        lr=1e-2, symbol_method="seq", retry_rates=(0.1, 0.3, 0.5), ablation_rate=0.1,
        ablation_bin=0, threads=1, workers=2,
    ),
    # closer to the paper's protocol (still far smaller than its 12-layer GPT-2)
    "full": Config(
        seeds=(0, 1, 2), train_ops=(1, 8), test_bins=((1, 4), (5, 8), (9, 10)), max_edge=10,
        n_layer=(2, 4), width=(2, 4), steps=4000, step_tokens=20000, d_model=256,
        n_layer_model=8, n_head=8, lr=1e-3, warmup_steps=200, n_test=300,
    ),
}  # fmt: skip


def gen_config(cfg: Any, ops: tuple[int, int]) -> GenConfig:
    """The iGSM generator settings of a run: ``ops`` (min, max) and the task fields that retry's
    `Config` has (max_edge, n_layer, width, mod, symbol_method, perm_level); the papers that
    train on iGSM through retry (sampling, pivotal) carry the same fields."""
    return GenConfig(
        min_op=ops[0], max_op=ops[1], max_edge=cfg.max_edge, n_layer=cfg.n_layer,
        width=cfg.width, mod=cfg.mod, symbol_method=cfg.symbol_method,
        perm_level=cfg.perm_level,
    )  # fmt: skip


class _Pool:
    """Training problems ``generate(gen, data_seed, i)``, drawn once on first use and shared
    by all variants (each reads from index 0, so they see the same problems in order)."""

    def __init__(self, cfg: Config) -> None:
        self.gen, self.seed, self.items = gen_config(cfg, cfg.train_ops), cfg.data_seed, []

    def __iter__(self):
        for i in itertools.count():
            if i == len(self.items):
                self.items.append(generate(self.gen, self.seed, i))
            yield self.items[i]


def _test_sets(cfg: Config) -> list[list[Problem]]:
    return [
        [generate(gen_config(cfg, b), cfg.data_seed + 1 + k, i) for i in range(cfg.n_test)]
        for k, b in enumerate(cfg.test_bins)
    ]


def run(cfg: Config, out: RunDir) -> list[Result]:
    """Train every variant for every seed, evaluate, and check the claims."""
    with num_threads(cfg.threads):
        return _run(cfg, out)


def _run(cfg: Config, out: RunDir) -> list[Result]:
    t0 = time.perf_counter()
    tests = _test_sets(cfg)
    pool = _Pool(cfg)
    flat = [p for t in tests for p in t]
    tok = build_tokenizer(flat, mod=cfg.mod, whole_names=cfg.whole_names)
    longest_prompt = max(len(tok.encode(p.text)) + 2 for p in flat)
    longest_solution = max(len(tok.encode(p.solution)) + 1 for p in flat)
    vs = variants(cfg)
    # room for a few [BACK] attempts beyond the longest correct solution
    max_new = cfg.max_new_tokens or int(longest_solution * 1.5)
    longest = longest_prompt + max_new
    out.log(stage="data", vocab_size=tok.vocab_size, seconds=time.perf_counter() - t0)
    acc: dict[str, list[list[float]]] = {v.name: [] for v in vs}  # variant -> seed -> bin
    back: dict[str, list[float]] = {v.name: [] for v in vs}
    prog: dict[str, list[list[float]]] = {v.name: [] for v in vs}  # partial credit
    runs = [(s, v) for s in cfg.seeds for v in vs]

    def job(data: _Flat, seed: int) -> tuple:
        return (cfg, tok, data, seed, longest, flat, max_new)

    with contextlib.ExitStack() as stack:
        if cfg.workers > 1:
            # each variant's models start as soon as its data are ready, while the next
            # variant's are built; results are read back in `runs` order
            workers = stack.enter_context(process_pool(cfg.workers, cfg.threads or 1))
            futures = {
                (seed, v.name): workers.submit(_fit_and_solve, *job(data, seed))
                for v, data in _variant_data(cfg, tok, pool, vs, out)
                for seed in cfg.seeds
            }
            fitted = (futures[seed, v.name].result() for seed, v in runs)
        else:
            data = dict((v.name, d) for v, d in _variant_data(cfg, tok, pool, vs, out))
            fitted = (_fit_and_solve(*job(data[v.name], seed)) for seed, v in runs)
        done = list(out.track(zip(runs, fitted), "train + eval", total=len(runs)))
    for (seed, v), (loss, seconds, sols) in done:
        out.log(stage="train", seed=seed, variant=v.name, final_loss=loss, seconds=seconds)
        bins, n_back, steps_right = [], 0, []
        for k, ((lo, hi), problems) in enumerate(zip(cfg.test_bins, tests)):
            part = sols[k * cfg.n_test : (k + 1) * cfg.n_test]
            sc, _ = score(problems, part)
            bins.append(sc.accuracy)
            steps_right.append(sc.progress)
            n_back += round(sc.back_rate * sc.n)
            out.log(stage="eval", seed=seed, variant=v.name, op_bin=f"{lo}-{hi}",
                    accuracy=sc.accuracy, back_rate=sc.back_rate, progress=sc.progress, example=part[0][:300])  # fmt: skip
        n_all = len(flat)
        acc[v.name].append(bins)
        prog[v.name].append(steps_right)
        back[v.name].append(n_back / max(1, n_all))
    out.log(stage="done", seconds=time.perf_counter() - t0)
    return _results(cfg, acc, back, prog)


def _variant_data(cfg: Config, tok: WordTokenizer, pool: _Pool, vs: list[Variant], out: RunDir):
    """Yield each variant with its training batches (`bucket_batches`, as a `_Flat`)."""
    for v in vs:
        # seeded by rate and kind, not name: the masked variant sees its twin's documents
        rng = random.Random(f"{cfg.data_seed}:{v.kind}:{v.retry_rate}")
        docs = (document(tok, p, v, rng, cfg.statement_loss) for p in pool)
        batches, n_docs, n_tokens = bucket_batches(
            docs, cfg.steps, cfg.step_tokens, tok.pad_id, cfg.max_len, seed=cfg.data_seed
        )
        if not cfg.documents:
            batches = [b[:2] for b in batches]
        out.log(stage="pack", variant=v.name, n_problems=n_docs, tokens=n_tokens,
                loss_tokens=sum(int((b[1] != -100).sum()) for b in batches),
                padded=sum(b[0].numel() for b in batches))  # fmt: skip
        yield v, _Flat(batches)


def _fit_and_solve(
    cfg: Config,
    tok: WordTokenizer,
    data: _Flat,
    seed: int,
    longest: int,
    problems: list[Problem],
    max_new: int,
) -> tuple[float, float, list[str]]:
    """Train one model on ``data`` and solve ``problems``: (final loss, training seconds,
    solutions). Runs in this process or in a worker (everything it takes pickles)."""
    t0 = time.perf_counter()
    model, loss = _train(cfg, tok.vocab_size, data, seed, longest)
    seconds = time.perf_counter() - t0
    return loss, seconds, solve(model, tok, problems, max_new, documents=cfg.documents)


class _Flat:
    """Batches of varying shapes stored as one flat tensor per field, so that a variant's
    data goes to a worker process as a few tensors rather than thousands."""

    def __init__(self, batches: list[tuple[torch.Tensor, ...]]) -> None:
        self.shapes = [tuple(b[0].shape) for b in batches]
        self.fields = tuple(
            torch.cat([b[k].flatten() for b in batches]) for k in range(len(batches[0]))
        )
        self.starts = [0]
        for r, c in self.shapes:
            self.starts.append(self.starts[-1] + r * c)

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        a, b = self.starts[i], self.starts[i + 1]
        return tuple(f[a:b].view(self.shapes[i]) for f in self.fields)

    @property
    def width(self) -> int:
        return max(c for _, c in self.shapes)


def _train(
    cfg: Config, vocab_size: int, data: _Flat, seed: int, longest: int
) -> tuple[Transformer, float]:
    seed_everything(seed)
    mcfg = ModelConfig(
        vocab_size=vocab_size, n_layer=cfg.n_layer_model, n_head=cfg.n_head,
        d_model=cfg.d_model, max_seq_len=max(data.width, longest),
    )  # fmt: skip
    model = Transformer(mcfg)
    rows = round(sum(r for r, _ in data.shapes) / len(data))  # for the trainer's samples/s
    tcfg = TrainConfig(
        steps=cfg.steps, lr=cfg.lr, batch_size=rows, warmup_steps=cfg.warmup_steps,
        weight_decay=0.1, seed=seed, log_every=max(1, cfg.steps // 10), precision=cfg.precision,
    )  # fmt: skip
    # data order is fixed (batch i at step i): the same for every seed
    state = train(model, tcfg, lambda i, g: data[i])
    return model, state.history[-1]["loss"]


def _table(cfg: Config, values: dict[str, list[list[float]]]) -> str:
    """'name: a/b/c; ...' — the mean over seeds of each bin."""
    n = len(cfg.test_bins)
    return "; ".join(
        f"{name}: " + "/".join(f"{sum(a[k] for a in rows) / len(rows):.2f}" for k in range(n))
        for name, rows in values.items()
    )


def _gated(values: list[float], ref: list[float], floor: float) -> list[float]:
    return [v if a >= floor else math.nan for v, a in zip(values, ref)]


def _results(
    cfg: Config,
    acc: dict[str, list[list[float]]],
    back: dict[str, list[float]],
    progress: dict[str, list[list[float]]] | None = None,
) -> list[Result]:
    seeds = list(cfg.seeds)
    hard = cfg.headline_bin % len(cfg.test_bins)
    lo, hi = cfg.test_bins[hard]
    where = f"op {lo}-{hi}" + (", inside the training range" if hi <= cfg.train_ops[1] else "")
    base = [a[hard] for a in acc["error-free"]]
    rates = [f"retry {r:g}" for r in cfg.retry_rates]
    best = max(rates, key=lambda n: sum(a[hard] for a in acc[n]))
    gain = [a[hard] - b for a, b in zip(acc[best], base)]
    r = f"retry {cfg.ablation_rate:g}"
    trained = acc
    if not cfg.ablations:  # not trained at this preset: NaN, never a pass
        acc = acc | {f"{r} masked": [[math.nan] * len(cfg.test_bins) for _ in seeds]}
        acc |= {f"retry_weak {cfg.ablation_rate:g}": acc[f"{r} masked"]}
    # A comparison with a model that solves (almost) nothing says nothing: NaN, never a pass.
    abl = hard if cfg.ablation_bin is None else cfg.ablation_bin % len(cfg.test_bins)
    alo, ahi = cfg.test_bins[abl]
    abl_where = f"op {alo}-{ahi}" + (
        ", inside the training range" if ahi <= cfg.train_ops[1] else ""
    )
    ref = [u[abl] for u in acc[r]]
    masked = _gated([m[abl] - u for m, u in zip(acc[f"{r} masked"], ref)], ref, cfg.min_accuracy)
    weak = _gated(
        [w[abl] - u for w, u in zip(acc[f"retry_weak {cfg.ablation_rate:g}"], ref)],
        ref,
        cfg.min_accuracy,
    )
    gate = (
        f"NaN where the retry {cfg.ablation_rate:g} model solves < {cfg.min_accuracy:g} of the bin"
    )
    table = _table(cfg, trained)
    bins = ", ".join(f"{a}-{b}" for a, b in cfg.test_bins)
    skipped = "" if cfg.ablations else "; not trained at this preset (ablations=False): NaN"
    note = f"op bins {bins} (train op {cfg.train_ops[0]}-{cfg.train_ops[1]}); mean accuracy per bin: {table}"
    if progress:
        note += (
            f"; mean share of needed steps right before the first mistake: {_table(cfg, progress)}"
        )
    return [
        Result.check(
            CLAIMS[0] + f" ({where}, best = {best})", "+16 points (78% -> 94%, op=23, rate 0.5)",
            gain, AtLeast(0.05), seeds, unit="accuracy", note=note,
        ),
        Result.check(
            CLAIMS[1] + f" ({abl_where}, rate {cfg.ablation_rate:g})", "masked <= unmasked",
            masked, AtMost(0.02), seeds, unit="accuracy",
            note=f"accuracy(masked) - accuracy(unmasked); 2 points of noise allowed; {gate}{skipped}",
        ),
        Result.check(
            CLAIMS[2] + f" ({abl_where}, rate {cfg.ablation_rate:g})", "retry_weak close to retry",
            weak, Within(0.0, abs=0.05), seeds, unit="accuracy",
            note=f"accuracy(retry_weak) - accuracy(retry); {gate}{skipped}",
        ),
        Result.check(
            CLAIMS[3] + f" (rate {cfg.ablation_rate:g}, all bins)", "< 5% of solutions",
            back[r], AtMost(0.05), seeds, unit="fraction",
            note="share of generated solutions containing [BACK]",
        ),
    ]  # fmt: skip
