"""Smaller, Weaker, Yet Better: Training LLM Reasoners via Compute-Optimal Sampling
(Bansal, Hosseini, Agarwal, Tran, Kazemi, 2024).

arXiv: https://arxiv.org/abs/2408.16737

Claim: at a fixed sampling budget (FLOPs), data from a weaker-but-cheaper (WC) model trains
better reasoners than data from a stronger-but-expensive (SE) model: WC data have higher
coverage and diversity (and a higher false-positive rate), and finetuning on them wins in
knowledge distillation, WC self-improvement and weak-to-strong improvement (relative gains
up to 31.6%).

Implemented here:
- `budget`: cost = 2 · params · generated tokens, the paper's S_WC = (P_SE / P_WC) · S_SE
  (`matched_samples`), and `sample_at_budget`, which draws samples per problem until the
  *measured* cost reaches a budget;
- `metrics`: coverage@k, diversity@k, false-positive rate (exact on iGSM with the step
  checker), final-answer extraction and filtering;
- `samplers`: anything with ``sample(prompts, n, temperature)``; `DecoderSampler` (the core
  decoder, KV cache) and `OpenAISampler` (any OpenAI-compatible ``/v1/completions``
  endpoint, our ``minirepro serve`` included);
- `dataset`: `build_dataset` (sample, judge, filter) from any sampler;
- `finetune`: generators trained on iGSM with the retry paper's documents and the core loop,
  finetuning on sampled data;
- `repro`: WC and SE core decoders of different sizes trained on iGSM, sampled at matched
  FLOPs, the three finetuning setups, and a sweep of the size gap.

Deviations: tiny decoders (tens of thousands of parameters) on easy iGSM problems (op 1-2,
two-layer structures, arithmetic mod 7, the retry paper's quick task) instead of Gemma2 9B /
27B on MATH; the student is a third decoder pretrained briefly, not Gemma-7B; seeds vary
sampling and finetuning, the generators are trained once. At quick size the data claims
reproduce (WC: higher coverage, diversity and exact FPR at matched measured FLOPs) but the
finetuning claims do not: SE data finetune better in all three setups on average, with
about half of all answer-filtered samples false positives (arithmetic mod 7). See NOTES.md.

Run: `minirepro run sampling --preset quick` (smoke: seconds; full: closer to the paper).
"""

from minirepro.papers.sampling.budget import (
    Sampled,
    generation_flops,
    matched_samples,
    sample_at_budget,
)
from minirepro.papers.sampling.dataset import SampledData, build_dataset, igsm_sampler
from minirepro.papers.sampling.finetune import (
    ModelSpec,
    TrainSpec,
    build_model,
    finetune,
    pretrain,
    solution_document,
)
from minirepro.papers.sampling.metrics import (
    DataStats,
    Judgement,
    coverage,
    data_stats,
    diversity,
    false_positive_rate,
    filter_correct,
    final_answer,
    judge_igsm,
)
from minirepro.papers.sampling.repro import CLAIMS, PRESETS, SETUPS, Config, run
from minirepro.papers.sampling.samplers import (
    DecoderSampler,
    EndpointError,
    OpenAISampler,
    Sampler,
)
from minirepro.registry import Paper

PAPER = Paper(
    id="sampling",
    title="Smaller, Weaker, Yet Better: compute-optimal sampling",
    arxiv="2408.16737",
    claims=CLAIMS,
    config=Config,
    presets=PRESETS,
    run=run,
    status="partial",  # the data claims reproduce, the finetuning claims do not (NOTES.md)
)

__all__ = [
    "CLAIMS",
    "PAPER",
    "PRESETS",
    "SETUPS",
    "Config",
    "run",
    "DataStats",
    "DecoderSampler",
    "EndpointError",
    "Judgement",
    "ModelSpec",
    "OpenAISampler",
    "Sampled",
    "SampledData",
    "Sampler",
    "TrainSpec",
    "build_dataset",
    "build_model",
    "coverage",
    "data_stats",
    "diversity",
    "false_positive_rate",
    "filter_correct",
    "final_answer",
    "finetune",
    "generation_flops",
    "igsm_sampler",
    "judge_igsm",
    "matched_samples",
    "pretrain",
    "sample_at_budget",
    "solution_document",
]
