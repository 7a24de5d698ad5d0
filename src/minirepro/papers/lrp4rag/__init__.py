"""LRP4RAG: detecting hallucinations in retrieval-augmented generation via layer-wise
relevance propagation (Hu et al., arXiv 2408.15533, https://arxiv.org/abs/2408.15533).

Claim: the relevance (LRP) of the prompt for each generated token differs between
hallucinated and faithful answers, so a small classifier on resampled relevance features
detects hallucinations: 69.16% accuracy (69.35% precision, 72.13% recall) on Llama-2-7b-chat
responses of RAGTruth (QA), ahead of prompting and SelfCheckGPT baselines.

What is implemented:
- `lrp_mode(model, variant)`: AttnLRP (or CP-LRP) for the core decoder as gradient × input,
  so the real SmolLM2-135M-Instruct can be explained; `relevance_matrix` gives the response
  × prompt relevance of a teacher-forced response, its backward passes batched with vmap.
  Tested equal to `lxt`'s AttnLRP on HF `LlamaForCausalLM`.
- Features (`matrix_features`: per-token means resampled to 220, 2-D grids for the LSTM),
  the classifiers (SVM rbf, random forest, MLP; an LSTM in torch) with 5-fold CV.
- Data: `load_ragtruth` for RAGTruth files a user has; `minirepro.tasks.rag` builds a
  synthetic RAG set (invented towns), `model_answers` labels a model's own answers.
- Baselines: mean token log-probability, the model prompted as a judge.

Deviations: the paper explains Llama-2-7b/13b on RAGTruth; here SmolLM2-135M on a synthetic
set whose hallucinations are swapped entities and the model's own sampled answers (NOTES.md).

Run: `minirepro run lrp4rag` (quick preset, bfloat16, a few minutes on 2 cores).
"""

from minirepro.papers.lrp4rag.baselines import JUDGE_TEMPLATE, judge_scores, logprob_scores
from minirepro.papers.lrp4rag.classifiers import (
    CLASSIFIERS,
    LSTMClassifier,
    Scores,
    cross_validate,
    make_classifier,
)
from minirepro.papers.lrp4rag.features import (
    FEATURE_LEN,
    matrix_features,
    resample_1d,
    resample_2d,
    token_means,
)
from minirepro.papers.lrp4rag.lrp import (
    VARIANTS,
    Relevance,
    identity_rule,
    lrp_mode,
    relevance_matrix,
    scale_grad,
)
from minirepro.papers.lrp4rag.pipeline import SYSTEM, encode_sample, explain, model_answers
from minirepro.papers.lrp4rag.plots import relevance_heatmaps
from minirepro.papers.lrp4rag.ragtruth import RAGTruthError, load_ragtruth, read_jsonl
from minirepro.papers.lrp4rag.repro import CLAIMS, PAPER_SCORES, PRESETS, Config, run, span_tokens
from minirepro.registry import Paper

PAPER = Paper(
    id="lrp4rag",
    title="LRP4RAG: Detecting Hallucinations in Retrieval-Augmented Generation via "
    "Layer-wise Relevance Propagation",
    arxiv="2408.15533",
    claims=CLAIMS,
    config=Config,
    presets=PRESETS,
    run=run,
    status="implemented",
)

__all__ = [
    "CLAIMS",
    "CLASSIFIERS",
    "FEATURE_LEN",
    "JUDGE_TEMPLATE",
    "LSTMClassifier",
    "PAPER",
    "PAPER_SCORES",
    "PRESETS",
    "SYSTEM",
    "VARIANTS",
    "Config",
    "RAGTruthError",
    "Relevance",
    "Scores",
    "cross_validate",
    "encode_sample",
    "explain",
    "identity_rule",
    "judge_scores",
    "load_ragtruth",
    "logprob_scores",
    "lrp_mode",
    "make_classifier",
    "matrix_features",
    "model_answers",
    "read_jsonl",
    "relevance_heatmaps",
    "relevance_matrix",
    "resample_1d",
    "resample_2d",
    "run",
    "scale_grad",
    "span_tokens",
    "token_means",
]
