"""Reproduction of InternVL 2.5's method claims at CPU scale, on digits in wide/tall canvases.

Per seed: a word tokenizer, decoders pretrained on the text form of the task (the stand-in
for a pretrained LLM), then ViT-MLP-LLM models trained through stages 1, 1.5 and 2 in
variants that differ in one thing each (tiling, unshuffle, loss weighting, filtering), and a
larger LLM trained from a fresh ViT (all stages) or with the main run's ViT (stages 1 and 2:
progressive scaling). Jobs run in single-threaded worker processes.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from minirepro.core.generate import SamplingParams
from minirepro.core.model import ModelConfig, Transformer
from minirepro.core.results import AtLeast, AtMost, Result, RunDir
from minirepro.core.seed import seed_everything
from minirepro.core.threads import num_threads, process_pool
from minirepro.core.tokenizer import WordTokenizer
from minirepro.papers.internvl.evaluate import accuracy, repetition_rate, vote_vs_greedy
from minirepro.papers.internvl.filtering import filter_records
from minirepro.papers.internvl.loss import WEIGHTINGS
from minirepro.papers.internvl.tiling import dynamic_preprocess, tiles_to_tensor
from minirepro.papers.internvl.training import (
    FULL_STAGES,
    PROGRESSIVE_STAGES,
    encode_record,
    encode_text_record,
    pretrain_vit,
    train_llm_text,
    train_stage,
)  # fmt: skip
from minirepro.papers.internvl.vit import ViT, ViTConfig
from minirepro.papers.internvl.vlm import IMG_CONTEXT, IMG_END, IMG_START, SEP, VLM, VLMConfig
from minirepro.tasks.glyphs import GlyphConfig, answer_quality, generate_glyphs

__all__ = ["CLAIMS", "PRESETS", "VARIANTS", "Config", "results", "run", "run_job"]

CLAIMS = [
    "Dynamic tiling beats a single resize on small glyphs (criterion: >= 10 points)",
    "Pixel unshuffle: 4x fewer image tokens with < 3 points loss",
    "Square loss weighting narrows the short/long-answer gap vs token averaging",
    "Filtering injected repetitive samples lowers repetitive outputs",
    "Progressive scaling: a ViT reused with a larger LLM saves training steps",
    "Majority vote over 8 chain-of-thought samples beats greedy",
    "The VLM reads the first digit of a wide or tall canvas (above 10% chance)",
]

# One thing changes per variant; "main" is dynamic tiling + unshuffle + square + filtered.
VARIANTS = (
    "main",
    "single",
    "no_unshuffle",
    "token",
    "sample",
    "unfiltered",
    "large",
    "progressive",
)


@dataclass
class Config:
    """One reproduction run.

    Attributes:
        seeds: data, weights and batches.
        n_train, n_test: training and held-out canvases per seed.
        glyphs: the canvases (tile 64 px; 2:1 to 4:1, wide or tall; 2-3 digits).
        repetitive_frac, noisy_frac: training records corrupted for the filtering claim.
        max_num: most tiles of the dynamic grid (the paper: 12; our canvases need <= 4).
        patch_size, vit_d, vit_layers: the ViT (64 px tiles / 8 px patches: 64 tokens, 16
            after unshuffle).
        llm_d, llm_layers: the small LLM; large_d, large_layers: the larger one.
        text_steps, text_lr: pretraining the LLMs on the text form of the task.
        n_vit, vit_steps, vit_lr: pretraining the ViT on single-glyph tiles.
        stage_steps: optimizer steps of stages 1, 1.5 and 2.
        lr_scale: multiplies the paper's stage learning rates (2e-4, 1e-5, 4e-5), sized for
            pretrained billion-parameter models, not tiny ones trained from scratch.
        batch_size: samples per step.
        weightings: loss weightings trained as variants besides the main run's "square".
        n_vote, vote_samples, temperature: the majority-vote test.
        n_repeat, repeat_temperature: held-out long questions sampled for the repetition
            rate, and their sampling temperature.
        curve_every: evaluation period (steps) of the progressive-scaling curves.
        workers: single-threaded worker processes.
    """

    seeds: tuple[int, ...] = (0, 1)
    n_train: int = 3000
    n_test: int = 200
    glyphs: GlyphConfig = field(default_factory=GlyphConfig)
    repetitive_frac: float = 0.2
    noisy_frac: float = 0.05
    max_num: int = 6
    patch_size: int = 8
    vit_d: int = 48
    vit_layers: int = 2
    llm_d: int = 64
    llm_layers: int = 2
    large_d: int = 96
    large_layers: int = 2
    text_steps: int = 150
    text_lr: float = 3e-3
    n_vit: int = 2000
    vit_steps: int = 200
    vit_lr: float = 1e-3
    stage_steps: tuple[int, int, int] = (50, 30, 220)
    lr_scale: float = 25.0
    batch_size: int = 16
    weightings: tuple[str, ...] = ("token",)
    n_vote: int = 60
    vote_samples: int = 8
    temperature: float = 0.7
    n_repeat: int = 100
    repeat_temperature: float = 1.0
    curve_every: int = 20
    workers: int = 2

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if isinstance(self.glyphs, dict):
            self.glyphs = GlyphConfig(**self.glyphs)
        for w in self.weightings:
            if w not in WEIGHTINGS or w == "square":
                raise ValueError(
                    f"weightings lists variants besides 'square' from {WEIGHTINGS}, got {w!r}"
                )
        if len(self.stage_steps) != 3 or min(self.stage_steps) < 1:
            raise ValueError(f"stage_steps must be three positive counts, got {self.stage_steps}")
        if self.n_train < self.batch_size or self.n_test < 10:
            raise ValueError("n_train must be >= batch_size and n_test >= 10")
        if self.workers < 1 or self.vote_samples < 1:
            raise ValueError("workers and vote_samples must be >= 1")

    def variants(self) -> tuple[str, ...]:
        return tuple(v for v in VARIANTS if v not in WEIGHTINGS or v in self.weightings)


PRESETS = {
    "smoke": Config(
        seeds=(0,), n_train=120, n_test=20, text_steps=30, stage_steps=(4, 4, 12),
        n_vote=4, n_repeat=8, curve_every=4, vit_d=16, llm_d=32, large_d=48, n_vit=100, vit_steps=10,
        large_layers=2, workers=1,
    ),
    # <= 5 minutes on 2 cores: see NOTES.md for the sizing
    "quick": Config(),
    "full": Config(
        seeds=(0, 1, 2), n_train=20000, n_test=500, vit_d=96, vit_layers=4, llm_d=128,
        llm_layers=4, large_d=192, large_layers=6, text_steps=1500,
        stage_steps=(300, 300, 3000), weightings=("token", "sample"), n_vote=200,
    ),
}  # fmt: skip


def make_tokenizer() -> WordTokenizer:
    """Digits, the question words, ``so``, and the image specials (unknown words raise)."""
    words = [str(d) for d in range(10)] + "first digit ? read the digits largest so".split()
    return WordTokenizer(
        sorted(set(words)), specials=[IMG_START, IMG_END, IMG_CONTEXT, SEP], strict=True
    )  # strict: an unknown word in a question is an error, not a silent <unk>


def _llm_config(cfg: Config, tok: WordTokenizer, d: int, layers: int) -> ModelConfig:
    n_tiles = cfg.max_num + 1
    tokens = n_tiles * (cfg.glyphs.tile // cfg.patch_size) ** 2  # no unshuffle: the longest
    return ModelConfig(
        vocab_size=tok.vocab_size, n_layer=layers, n_head=4, d_model=d,
        max_seq_len=tokens + cfg.glyphs.loop_words + 16,
    )  # fmt: skip


def pretrain(cfg: Config, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """The stand-ins for the paper's pretrained parts: the small and large decoders trained
    on the text form of the task, and the ViT trained to classify single glyphs (native, and
    squeezed by a single resize of a 2:1-4:1 canvas, so neither tiling mode is favoured)."""
    with num_threads(1):
        tok = make_tokenizer()
        train_recs, _ = _data(cfg, seed)
        text = [encode_text_record(tok, r) for r in train_recs]
        out = {}
        for name, d, layers in [
            ("small", cfg.llm_d, cfg.llm_layers), ("large", cfg.large_d, cfg.large_layers),
        ]:  # fmt: skip
            seed_everything(seed)
            llm = Transformer(_llm_config(cfg, tok, d, layers))
            train_llm_text(llm, text, cfg.text_steps, pad_id=tok.pad_id, lr=cfg.text_lr, seed=seed)
            out[name] = {k: v.detach().clone() for k, v in llm.state_dict().items()}
        single = replace(
            cfg.glyphs, ratios=(1, 1, 1, *cfg.glyphs.ratios), n_digits=(1, 1), kinds=("first",)
        )
        recs = generate_glyphs(cfg.n_vit, 7_000_001 + seed, single, "train")
        tiles = torch.cat(
            [tiles_to_tensor(dynamic_preprocess(r["image"], single.tile, 1, 1)) for r in recs]
        )
        labels = torch.tensor([r["digits"][0] for r in recs])
        seed_everything(seed)
        vit = ViT(_vit_config(cfg))
        pretrain_vit(vit, tiles, labels, cfg.vit_steps, lr=cfg.vit_lr, seed=seed)
        out["vit"] = {k: v.detach().clone() for k, v in vit.state_dict().items()}
        return out


def _vit_config(cfg: Config) -> ViTConfig:
    return ViTConfig(cfg.glyphs.tile, cfg.patch_size, 1, cfg.vit_d, cfg.vit_layers, 4)


def _data(cfg: Config, seed: int, filtered: bool = True) -> tuple[list[dict], list[dict]]:
    glyphs = replace(cfg.glyphs, repetitive_frac=cfg.repetitive_frac, noisy_frac=cfg.noisy_frac)
    train = generate_glyphs(cfg.n_train, seed, glyphs, "train")
    if filtered:
        train, _ = filter_records(train, answer_quality)
    test = generate_glyphs(cfg.n_test, 1_000_003 + seed, cfg.glyphs, "test")
    return train, test


def run_job(
    cfg: Config, seed: int, variant: str, llm_state: dict, vit_state: dict | None = None
) -> dict[str, Any]:
    """Train and evaluate one variant at one seed.

    Returns:
        ``metrics`` (accuracies and the variant's own measurements), ``log`` and, for the
        main run, ``vit`` (its ViT weights, reused by progressive scaling).
    """
    with num_threads(1):
        t0 = time.perf_counter()
        tok = make_tokenizer()
        train_recs, test_recs = _data(cfg, seed, filtered=variant != "unfiltered")
        large = variant in ("large", "progressive")
        vlm_cfg = VLMConfig(
            vit=_vit_config(cfg),
            llm=_llm_config(cfg, tok, *((cfg.large_d, cfg.large_layers) if large else (cfg.llm_d, cfg.llm_layers))),
            downsample_ratio=1.0 if variant == "no_unshuffle" else 0.5,
            max_num=1 if variant == "single" else cfg.max_num,
        )  # fmt: skip
        seed_everything(seed)
        vlm = VLM(vlm_cfg, tok.token_to_id(IMG_CONTEXT))
        vlm.llm.load_state_dict(llm_state)
        vlm.vit.load_state_dict(vit_state)  # pretrained; for "progressive" the main run's

        def encode(recs: list[dict]) -> list:
            tiles = [
                tiles_to_tensor(dynamic_preprocess(r["image"], cfg.glyphs.tile, 1, vlm_cfg.max_num))
                for r in recs
            ]
            return [encode_record(tok, r, t, vlm_cfg.tokens_per_tile) for r, t in zip(recs, tiles)]

        train_ex, test_ex = encode(train_recs), encode(test_recs)
        curve_ex = test_ex[: min(100, len(test_ex))]
        t1 = time.perf_counter()
        weighting = variant if variant in WEIGHTINGS else "square"
        stages = PROGRESSIVE_STAGES if variant == "progressive" else FULL_STAGES
        curve: list[tuple[int, float]] = []
        done = 0
        for name in stages:
            steps = cfg.stage_steps[FULL_STAGES.index(name)]

            def eval_fn(model, step, done=done):
                acc = accuracy(model, curve_ex, tok.pad_id)["all"]
                curve.append((done + step, acc))
                return {"acc": acc}

            track = large and cfg.curve_every > 0
            train_stage(
                vlm, name, train_ex, steps, pad_id=tok.pad_id, batch_size=cfg.batch_size,
                lr_scale=cfg.lr_scale, weighting=weighting, seed=seed * 10 + FULL_STAGES.index(name),
                eval_fn=eval_fn if track else None, eval_every=cfg.curve_every if track else 0,
            )  # fmt: skip
            done += steps
        t2 = time.perf_counter()
        vlm.eval()
        metrics: dict[str, Any] = accuracy(vlm, test_ex, tok.pad_id)
        metrics["tokens_per_tile"] = vlm_cfg.tokens_per_tile
        metrics["image_tokens"] = statistics.fmean(
            len(e.tiles) * vlm_cfg.tokens_per_tile for e in test_ex
        )
        long_ex = [e for e in test_ex if e.kind != "first"][: cfg.n_repeat]
        if variant in ("main", "unfiltered"):
            params = SamplingParams(
                max_new_tokens=cfg.glyphs.loop_words, temperature=cfg.repeat_temperature,
                stop_tokens=(tok.eos_id,), seed=seed,
            )  # fmt: skip
            metrics["repetition"] = repetition_rate(vlm, tok, long_ex, params)
        if variant == "main":
            cot = [
                (e, str(max(r["digits"]))) for e, r in zip(test_ex, test_recs) if r["kind"] == "max"
            ]
            cot = cot[: cfg.n_vote]
            metrics.update(vote_vs_greedy(
                vlm, tok, [e for e, _ in cot], [a for _, a in cot], cfg.vote_samples,
                cfg.temperature, cfg.glyphs.loop_words, seed,
            ))  # fmt: skip
        if large:
            metrics["curve"] = curve
        res: dict[str, Any] = {"metrics": metrics}
        if variant == "main":
            res["vit"] = {k: v.detach().clone() for k, v in vlm.vit.state_dict().items()}
        res["log"] = dict(
            seed=seed, variant=variant, n_train=len(train_ex), setup_s=t1 - t0,
            train_s=t2 - t1, eval_s=time.perf_counter() - t2,
            **{k: v for k, v in metrics.items() if k != "curve"},
        )  # fmt: skip
        return res


def run(cfg: Config, out: RunDir) -> list[Result]:
    """Pretrain the parts, train every variant for every seed, check the claims.

    With ``cfg.workers > 1`` the per-seed pretraining and the (seed, variant) jobs run in a
    pool of single-threaded processes; progressive scaling starts when its seed's main run
    has finished (it reuses that run's ViT).
    """
    variants = [v for v in cfg.variants() if v != "progressive"]
    jobs = [(s, v) for v in variants for s in cfg.seeds]
    rows: dict[int, dict[str, Any]] = {s: {} for s in cfg.seeds}

    def args(s: int, v: str, parts: dict, vit: dict | None = None) -> tuple:
        llm = parts["large" if v in ("large", "progressive") else "small"]
        return cfg, s, v, llm, vit if vit is not None else parts["vit"]

    def record(seed: int, variant: str, res: dict) -> None:
        rows[seed][variant] = res["metrics"]
        out.log(**res["log"])

    if cfg.workers > 1:
        with process_pool(cfg.workers) as pool:
            pre = {s: pool.submit(pretrain, cfg, s) for s in cfg.seeds}
            parts = {s: f.result() for s, f in out.track(list(pre.items()), "pretraining")}
            futures = {(s, v): pool.submit(run_job, *args(s, v, parts[s])) for s, v in jobs}
            progressive = {}
            for s in cfg.seeds:  # the main runs were submitted first
                vit = futures[(s, "main")].result()["vit"]
                progressive[s] = pool.submit(run_job, *args(s, "progressive", parts[s], vit))
            for (s, v), f in out.track(list(futures.items()), "jobs"):
                record(s, v, f.result())
            for s, f in progressive.items():
                record(s, "progressive", f.result())
    else:
        parts = {s: pretrain(cfg, s) for s in out.track(cfg.seeds, "pretraining")}
        vits = {}
        for s, v in out.track(jobs, "jobs"):
            res = run_job(*args(s, v, parts[s]))
            record(s, v, res)
            vits[s] = res.get("vit", vits.get(s))
        for s in cfg.seeds:
            record(s, "progressive", run_job(*args(s, "progressive", parts[s], vits[s])))
    return results(cfg, rows)


def steps_to(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first step of a (step, accuracy) curve reaching `target`; None if none does."""
    return next((s for s, a in curve if a >= target), None)


def results(cfg: Config, rows: dict[int, dict[str, Any]]) -> list[Result]:
    """Results from per-seed rows ``{seed: {variant: metrics}}``."""
    seeds = list(rows)
    col = lambda v, k: [rows[s][v][k] for s in seeds]  # noqa: E731
    mean = lambda v, k: statistics.fmean(col(v, k))  # noqa: E731
    scale = (
        f"ViT d={cfg.vit_d}x{cfg.vit_layers}, LLM d={cfg.llm_d}x{cfg.llm_layers}, "
        f"{cfg.n_train} canvases, stages {cfg.stage_steps} steps"
    )
    out = [
        Result.check(
            CLAIMS[0],
            "dynamic high resolution, 1-12 tiles of 448 px (no single-resize ablation)",
            [a - b for a, b in zip(col("main", "all"), col("single", "all"))],
            AtLeast(10.0),
            seeds,
            unit="points",
            note=f"held-out accuracy, all questions: tiled {mean('main', 'all'):.1f}%, "
            f"one 64 px resize {mean('single', 'all'):.1f}% ({scale})",
        ),
        Result.check(
            CLAIMS[1],
            "256 instead of 1,024 tokens per 448 px tile",
            [b - a for a, b in zip(col("main", "all"), col("no_unshuffle", "all"))],
            AtMost(3.0),
            seeds,
            unit="points lost",
            note=f"{rows[seeds[0]]['main']['tokens_per_tile']} vs "
            f"{rows[seeds[0]]['no_unshuffle']['tokens_per_tile']} tokens per tile; accuracy "
            f"{mean('main', 'all'):.1f}% vs {mean('no_unshuffle', 'all'):.1f}% without unshuffle",
        ),
    ]
    gap = lambda v: [abs(a - b) for a, b in zip(col(v, "first"), col(v, "read"))]  # noqa: E731
    gaps = {v: statistics.fmean(gap(v)) for v in ("main", *cfg.weightings)}
    out.append(Result.check(
        CLAIMS[2], "square averaging balances short and long responses (section 4.3)",
        [t - s for t, s in zip(gap("token"), gap("main"))], AtLeast(1.0), seeds,
        unit="points narrower",
        note="|first-digit - read-all| accuracy gap: " + ", ".join(
            f"{'square' if v == 'main' else v} {g:.1f}" for v, g in gaps.items()
        ) + f"; short accuracy token {mean('token', 'first'):.1f} / square {mean('main', 'first'):.1f}, "
        f"long token {mean('token', 'read'):.1f} / square {mean('main', 'read'):.1f}",
    ))  # fmt: skip
    out.append(Result.check(
        CLAIMS[3], "repetition filtering removes infinite-loop outputs (section 5.2)",
        [a - b for a, b in zip(col("unfiltered", "repetition"), col("main", "repetition"))],
        AtLeast(1.0), seeds, unit="points",
        note=f"sampled (T={cfg.repeat_temperature}) long answers that loop: unfiltered "
        f"{mean('unfiltered', 'repetition'):.1f}%, filtered {mean('main', 'repetition'):.1f}% "
        f"({100 * cfg.repetitive_frac:.0f}% of long training answers loop)",
    ))  # fmt: skip
    savings, notes = [], []
    total = sum(cfg.stage_steps)
    for s in seeds:
        scratch, prog = rows[s]["large"]["curve"], rows[s]["progressive"]["curve"]
        target = 0.9 * scratch[-1][1]  # of the fresh-ViT run's final accuracy, same questions
        a, b = steps_to(scratch, target), steps_to(prog, target)
        a = a if a is not None else total
        b = b if b is not None else 2 * total  # never reached: counted as twice the budget
        savings.append(100.0 * (1 - b / a))
        notes.append(f"seed {s}: {b} vs {a} steps to {target:.0f}%")
    out.append(Result.check(
        CLAIMS[4], "120B training tokens vs 1.4T for Qwen2-VL", savings, AtLeast(10.0), seeds,
        unit="% fewer steps",
        note=f"large LLM d={cfg.large_d}x{cfg.large_layers}: steps to 90% of the fresh-ViT run's final "
        f"accuracy (100 held-out questions), reused ViT (stages 1, 2) vs fresh ViT (1, 1.5, 2): " + "; ".join(notes),
    ))  # fmt: skip
    out.append(Result.check(
        CLAIMS[5], "+3.7 (MMMU, InternVL2.5-78B)",
        [v - g for v, g in zip(col("main", "vote"), col("main", "greedy"))], AtLeast(1.0), seeds,
        unit="points",
        note=f"largest-digit questions: greedy CoT {mean('main', 'greedy'):.1f}%, vote of "
        f"{cfg.vote_samples} at T={cfg.temperature} {mean('main', 'vote'):.1f}% ({cfg.n_vote} questions)",
    ))  # fmt: skip
    out.append(Result.check(
        CLAIMS[6], "MMMU 70.1 (not comparable)", col("main", "first"), AtLeast(50.0), seeds,
        unit="%", note=f"read-all {mean('main', 'read'):.1f}%, largest (CoT) {mean('main', 'max'):.1f}%",
    ))  # fmt: skip
    return out
