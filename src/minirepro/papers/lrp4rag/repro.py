"""Reproduction of LRP4RAG on the real SmolLM2-135M-Instruct and a synthetic RAG set.

`run(cfg, out)` builds passages about invented towns with questions, three kinds of
responses (faithful copies, entity-swapped hallucinations, and the model's own sampled
answers labelled against the passage), explains every response token with AttnLRP, turns
each response × prompt matrix into the paper's features and evaluates the four
classifiers with 5-fold cross-validation (repeated over CV seeds), beside the two
baselines (mean token log-probability and the model as a judge). It also tests whether
hallucinated answer tokens draw less relevance from the prompt than faithful ones
(Mann-Whitney U) and draws the heat maps of a faithful and a hallucinated answer.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from scipy.stats import mannwhitneyu

from minirepro.core.pretrained import Pretrained, load_smollm2
from minirepro.core.results import AtLeast, AtMost, Result, RunDir
from minirepro.core.seed import seed_everything
from minirepro.core.threads import num_threads
from minirepro.papers.lrp4rag.baselines import judge_scores, logprob_scores
from minirepro.papers.lrp4rag.classifiers import CLASSIFIERS, Scores, cross_validate
from minirepro.papers.lrp4rag.features import matrix_features, token_means
from minirepro.papers.lrp4rag.lrp import VARIANTS
from minirepro.papers.lrp4rag.pipeline import SYSTEM, encode_sample, explain, model_answers
from minirepro.papers.lrp4rag.plots import relevance_heatmaps
from minirepro.papers.lrp4rag.ragtruth import load_ragtruth
from minirepro.tasks.rag import RAGSample, make_rag_examples, rag_samples

__all__ = ["CLAIMS", "PAPER_SCORES", "PRESETS", "Config", "run", "span_tokens"]

# Table 2 of the paper, LRP4RAG (SVM) on Llama-2-7b-chat responses of RAGTruth (QA).
PAPER_SCORES = {"accuracy": 0.6916, "precision": 0.6935, "recall": 0.7213}
CLAIMS = [
    "SVM on resampled LRP features detects hallucinations (5-fold ROC-AUC)",
    "LRP4RAG beats the mean-token-log-probability baseline",
    "Hallucinated tokens draw less relevance from the prompt (Mann-Whitney U)",
]


@dataclass
class Config:
    """What one reproduction run does.

    Attributes:
        n_examples: passages with one question each; each gives a faithful and a swapped
            response, and (model_answers) one answer of the model's own.
        model_answers: also sample the model's own answers, labelled against the passage.
        answer_temperature: sampling temperature of those answers (greedy ones are almost
            always right on this easy set; sampling gives both kinds).
        max_new_tokens: length limit of the model's answers.
        n_layer: keep only the first n_layer of SmolLM2's 30 layers (None: all). A
            cheap stand-in for the smoke test; the claims are about the whole model.
        dtype: "float32", or "bfloat16" (AMX on this CPU; relevance rows correlate at
            0.997 with float32 ones, NOTES.md).
        variant: "attnlrp" (the paper) or "cp" (CP-LRP).
        chunk_size: response tokens explained per batched backward pass.
        feature_len: per-token means resampled to this length ("a fixed length of 220").
        lstm_grid: (rows, cols) of the 2-D resampling the LSTM reads (the reference:
            300 × 800).
        classifiers: which of svm, rf, mlp, lstm to evaluate.
        judge: also run the prompt-the-model judge baseline.
        n_splits: folds of the cross-validation ("5-fold").
        seeds: CV seeds (fold shuffles and classifier inits); relevance is computed once.
        data_seed: seed of the synthetic set and of the sampled answers.
        ragtruth: a folder with RAGTruth's response.jsonl and source_info.jsonl: evaluate on
            its QA responses instead of the synthetic set (RAGTruth does not ship here).
        ragtruth_model: keep only this generator's responses (e.g. "llama-2-7b-chat").
        max_samples: keep at most this many RAGTruth responses (None: all).
        threads: torch intra-op threads during the run (restored after). 1: on the shared
            2-core machine a second thread made decoding 6-10x and relevance 8x slower
            (threads spin-waiting for a descheduled partner, NOTES.md).
    """

    n_examples: int = 24
    model_answers: bool = True
    answer_temperature: float = 0.7
    max_new_tokens: int = 24
    n_layer: int | None = None
    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    variant: Literal["attnlrp", "cp"] = "attnlrp"
    chunk_size: int = 16
    feature_len: int = 220
    lstm_grid: tuple[int, int] = (8, 32)
    classifiers: tuple[str, ...] = ("svm", "rf", "mlp", "lstm")
    judge: bool = True
    n_splits: int = 5
    seeds: tuple[int, ...] = (0, 1, 2)
    data_seed: int = 0
    ragtruth: str | None = None
    ragtruth_model: str | None = None
    max_samples: int | None = None
    threads: int | None = 1

    def __post_init__(self) -> None:
        if self.n_examples < self.n_splits:
            raise ValueError(
                f"n_examples={self.n_examples} gives too few samples for {self.n_splits}-fold CV"
            )
        unknown = [c for c in self.classifiers if c not in CLASSIFIERS]
        if unknown or "svm" not in self.classifiers:
            raise ValueError(f"classifiers must include 'svm' and come from {CLASSIFIERS[:4]}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")


PRESETS = {
    # Seconds: SmolLM2 cut to its first 2 layers, 6 passages, short sampled answers.
    "smoke": Config(
        n_examples=6, n_layer=2, max_new_tokens=12, seeds=(0,), classifiers=("svm", "lstm")
    ),
    # The main job, <= 5 minutes on 2 cores: the whole model in bfloat16, 20 passages
    # (60 responses, about 12 tokens each).
    "quick": Config(n_examples=20),
    # Closer to the paper's scale: 200 passages (600 responses), float32.
    "full": Config(n_examples=200, dtype="float32", seeds=(0, 1, 2, 3, 4), lstm_grid=(16, 64)),
}


def _load(cfg: Config) -> Pretrained:
    pm = load_smollm2(dtype=getattr(torch, cfg.dtype))
    if cfg.n_layer is not None:
        if not 1 <= cfg.n_layer <= pm.model.cfg.n_layer:
            raise ValueError(f"n_layer must lie in [1, {pm.model.cfg.n_layer}], got {cfg.n_layer}")
        pm.model.layers = pm.model.layers[: cfg.n_layer]
        pm.model.cfg.n_layer = cfg.n_layer
    return pm


def span_tokens(pm: Pretrained, sample: RAGSample, span: str) -> list[int]:
    """Indices of the response tokens that overlap `span` (first occurrence) in the text."""
    start = sample.response.find(span)
    if start < 0:
        raise ValueError(f"span {span!r} is not in the response {sample.response!r}")
    end = start + len(span)
    enc = pm.tokenizer(sample.response, add_special_tokens=False, return_offsets_mapping=True)
    return [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < end and b > start]


def _token_relevance(pm: Pretrained, samples, rels) -> tuple[np.ndarray, np.ndarray]:
    """Per-token prompt relevance of the answer entity in faithful vs swapped responses."""
    faithful, swapped = [], []
    for s, r in zip(samples, rels, strict=True):
        if s.kind not in ("faithful", "swapped"):
            continue
        means = token_means(r.prompt)
        vals = [float(means[i]) for i in span_tokens(pm, s, s.meta["span"])]
        (swapped if s.hallucinated else faithful).extend(vals)
    return np.array(faithful), np.array(swapped)


def _samples(cfg: Config, pm: Pretrained) -> list[RAGSample]:
    """RAGTruth responses if `cfg.ragtruth` names a folder, else the synthetic set."""
    if cfg.ragtruth is not None:
        samples = load_ragtruth(cfg.ragtruth, model=cfg.ragtruth_model)[: cfg.max_samples]
        if not samples:
            raise ValueError(f"no QA responses in {cfg.ragtruth} (model={cfg.ragtruth_model!r})")
        return samples
    examples = make_rag_examples(cfg.n_examples, cfg.data_seed)
    samples = rag_samples(examples, cfg.data_seed, system=SYSTEM)
    if cfg.model_answers:
        samples += model_answers(
            pm, examples, cfg.answer_temperature, cfg.max_new_tokens, cfg.data_seed
        )
    return samples


def _mann_whitney(pm: Pretrained, samples, rels) -> tuple[float, dict]:
    """One-sided Mann-Whitney U: do hallucinated tokens draw less prompt relevance?

    With the synthetic set's spans, the answer-entity tokens of swapped vs faithful
    responses; otherwise (RAGTruth) every response's mean over its tokens, hallucinated
    vs faithful responses.
    """
    if any(s.kind == "swapped" for s in samples):
        good, bad = _token_relevance(pm, samples, rels)
        level = "answer-entity tokens"
    else:
        means = np.array([float(token_means(r.prompt).mean()) for r in rels])
        flags = np.array([s.hallucinated for s in samples])
        good, bad, level = means[~flags], means[flags], "responses"
    mw = mannwhitneyu(bad, good, alternative="less")
    info = {"level": level, "u": float(mw.statistic), "n_faithful": len(good),
            "n_hallucinated": len(bad), "faithful_median": float(np.median(good)),
            "hallucinated_median": float(np.median(bad))}  # fmt: skip
    return float(mw.pvalue), info


def _heatmap(pm: Pretrained, samples, rels, out: RunDir) -> None:
    """A faithful response and a hallucinated one (to the same prompt where there is one)."""
    good = next(i for i, s in enumerate(samples) if not s.hallucinated)
    bad = [i for i, s in enumerate(samples) if s.hallucinated]
    same = [i for i in bad if samples[i].source_id == samples[good].source_id]
    pair = [good, (same or bad)[0]]
    tok = pm.tokenizer
    prompt_ids, _ = encode_sample(pm, samples[pair[0]])
    rows = [[tok.decode([t]) for t in encode_sample(pm, samples[i])[1]] for i in pair]
    # Leave out the chat template's system turn: start at the passage.
    text = [tok.decode([t]) for t in prompt_ids]
    first = next((j for j, t in enumerate(text) if "Pass" in t), 0)
    fig = relevance_heatmaps(
        [rels[i].prompt for i in pair],
        [f"{samples[i].kind}: {samples[i].response!r}" for i in pair],
        text,
        rows,
        first_prompt_token=first,
    )
    out.savefig(fig, "heatmap")


def run(cfg: Config, out: RunDir) -> list[Result]:
    """Builds the data, explains it, evaluates detectors and checks the claims.

    Args:
        cfg: the run's config (see `PRESETS`).
        out: the run folder; metrics to metrics.jsonl, the heat map to figures/.
    Returns:
        Results for each classifier (ROC-AUC, accuracy, precision, recall), the baselines,
        the margin over the log-probability baseline and the Mann-Whitney test.
    """
    with num_threads(cfg.threads):
        return _run(cfg, out)


def _run(cfg: Config, out: RunDir) -> list[Result]:
    t0 = time.perf_counter()
    seed_everything(cfg.data_seed)
    pm = _load(cfg)
    samples = _samples(cfg, pm)
    y = np.array([int(s.hallucinated) for s in samples])
    groups = np.array([s.source_id for s in samples])
    kinds = {k: sum(s.kind == k for s in samples) for k in ("faithful", "swapped", "model")}
    model_bad = sum(s.hallucinated for s in samples if s.kind == "model")
    out.log(stage="data", **kinds, model_hallucinated=model_bad, load_s=time.perf_counter() - t0)

    t1 = time.perf_counter()
    rels = explain(pm, out.track(samples, "relevance"), cfg.variant, cfg.chunk_size)
    cons = [float((r.matrix.sum(1) - r.logits).abs().div(r.logits.abs()).median()) for r in rels]
    out.log(stage="relevance", seconds=time.perf_counter() - t1, n=len(rels),
            response_tokens=sum(len(r.logits) for r in rels),
            conservation_median_rel_err=float(np.median(cons)))  # fmt: skip

    X = matrix_features([r.prompt for r in rels], cfg.feature_len)
    X2 = matrix_features([r.prompt for r in rels], grid=cfg.lstm_grid)
    baselines = {"logprob": logprob_scores(rels)[:, None]}
    if cfg.judge:
        baselines["judge"] = judge_scores(pm, samples)[:, None]
    scores: dict[str, list[Scores]] = {}
    for seed in cfg.seeds:
        for name in cfg.classifiers:
            feats = X2 if name == "lstm" else X
            sc = cross_validate(feats, y, name, cfg.n_splits, seed, groups)
            scores.setdefault(name, []).append(sc)
            out.log(stage="cv", seed=seed, classifier=name, **asdict(sc))
        for name, feats in baselines.items():
            sc = cross_validate(feats, y, "logreg", cfg.n_splits, seed, groups)
            scores.setdefault(name, []).append(sc)
            out.log(stage="cv", seed=seed, classifier=name, **asdict(sc))

    p_value, mw = _mann_whitney(pm, samples, rels)
    out.log(stage="mannwhitney", p=p_value, **mw)
    _heatmap(pm, samples, rels, out)
    return _results(cfg, scores, p_value, mw, len(samples))


def _results(cfg: Config, scores, p_value: float, mw: dict, n: int) -> list[Result]:
    seeds = list(cfg.seeds)

    def metric(name: str, key: str) -> list[float]:
        return [getattr(s, key) for s in scores[name]]

    data = f"RAGTruth {cfg.ragtruth}" if cfg.ragtruth else "synthetic RAG set"
    where = f"{n} responses, {cfg.n_splits}-fold CV over {len(seeds)} seeds"
    out = [
        Result.check(f"{CLAIMS[0]}", "—", metric("svm", "roc_auc"), AtLeast(0.75), seeds,
                     note=f"{data} on SmolLM2-135M ({where})"),
    ]  # fmt: skip
    diff = [
        a - b for a, b in zip(metric("svm", "roc_auc"), metric("logprob", "roc_auc"), strict=True)
    ]
    out.append(
        Result.check(
            f"{CLAIMS[1]}: SVM ROC-AUC minus log-prob ROC-AUC",
            "> 0 (paper: beats prompting and SelfCheckGPT)",
            diff,
            AtLeast(1e-9),
            seeds,
        )  # fmt: skip
    )
    out.append(
        Result.check(
            CLAIMS[2] + ": p-value",
            "significant",
            [p_value],
            AtMost(0.01),
            [cfg.data_seed],
            note=f"{mw['level']}: {mw['n_hallucinated']} hallucinated vs {mw['n_faithful']} faithful",
        )  # fmt: skip
    )
    for key, paper in PAPER_SCORES.items():
        out.append(
            Result.check(
                f"SVM {key}",
                paper,
                metric("svm", key),
                AtLeast(paper),
                seeds,
                note="paper: Llama-2-7b-chat on RAGTruth QA",
            )  # fmt: skip
        )
    for name in [*cfg.classifiers[1:], *(b for b in ("logprob", "judge") if b in scores)]:
        label = {"rf": "random forest", "mlp": "MLP", "lstm": "LSTM",
                 "logprob": "baseline: mean token log-prob", "judge": "baseline: model as judge"}[name]  # fmt: skip
        for key in ("roc_auc", "accuracy"):
            out.append(
                Result.check(
                    f"{label} {key}",
                    "—",
                    metric(name, key),
                    AtLeast(0.5),
                    seeds,
                    note="criterion: above chance",
                )  # fmt: skip
            )
    return out
