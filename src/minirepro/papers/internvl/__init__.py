"""InternVL 2.5: Expanding Performance Boundaries of Open-Source Multimodal Models with Model,
Data, and Test-Time Scaling (Chen et al., 2024).

arXiv: https://arxiv.org/abs/2412.05271 · reference: OpenGVLab/InternVL.

Claim: a ViT-MLP-LLM model with dynamic high-resolution tiling, pixel unshuffle, a
three-stage training pipeline, progressive scaling and strict data filtering is the first
open model above 70 on MMMU (+3.7 from chain-of-thought with majority voting), trained on
about 120B tokens (Qwen2-VL: 1.4T).

Implemented here:
- `tiling`: `dynamic_preprocess` (candidate grids, closest aspect ratio with the reference's
  tie rule, bicubic resize, row-major crops, thumbnail), equal to transformers' image
  processor;
- `projector`: `pixel_shuffle` (v2 and v1) and `MLPProjector`, equal to transformers'
  InternVL on the same weights; `vit`: a small ViT;
- `vlm`: `VLM`, image features spliced into the core decoder's input embeddings, answering
  questions about images of any aspect ratio;
- `training`: stages 1 / 1.5 / 2 with their learning rates on the core trainer, progressive
  scaling; `loss`: token / sample / square weighting; `filtering`: repetition and heuristic
  filters and a stated stand-in for the LLM quality judge; `voting`: CoT majority vote;
- data in `minirepro.tasks.glyphs`: scikit-learn's real digits in wide and tall canvases;
- `repro`: `run(cfg, out)`.

Deviations: everything is toy-sized on the CPU; decoders pretrained on the text form of the
task and a ViT pretrained to classify single glyphs (`training.pretrain_vit`) stand in for
the paper's pretrained LLM and InternViT; the stage learning rates are scaled up (x25);
quality scoring is a rule, not an LLM. See NOTES.md.

Run: `minirepro run internvl --preset quick`.
"""

from minirepro.papers.internvl.evaluate import (
    accuracy,
    repetition_rate,
    sample_answers,
    vote_vs_greedy,
)
from minirepro.papers.internvl.filtering import (
    FilterConfig,
    duplicate_lines,
    filter_records,
    is_repetitive,
    repetition_score,
)
from minirepro.papers.internvl.loss import WEIGHTINGS, loss_weights, weighted_lm_loss
from minirepro.papers.internvl.projector import MLPProjector, pixel_shuffle, tokens_to_grid
from minirepro.papers.internvl.repro import CLAIMS, PRESETS, Config, make_tokenizer, run
from minirepro.papers.internvl.tiling import (
    Tiling,
    candidate_grids,
    closest_grid,
    dynamic_preprocess,
    tiles_to_tensor,
)
from minirepro.papers.internvl.training import (
    FULL_STAGES,
    PROGRESSIVE_STAGES,
    STAGES,
    Example,
    Stage,
    collate,
    encode_record,
    encode_text_record,
    pretrain_vit,
    set_trainable,
    train_llm_text,
    train_stage,
)
from minirepro.papers.internvl.vit import ViT, ViTConfig
from minirepro.papers.internvl.vlm import IMG_CONTEXT, VLM, VLMConfig, build_prompt
from minirepro.papers.internvl.voting import extract_answer, majority_vote
from minirepro.registry import Paper

PAPER = Paper(
    id="internvl",
    title="InternVL 2.5: ViT-MLP-LLM, dynamic resolution, test-time scaling",
    arxiv="2412.05271",
    claims=CLAIMS,
    config=Config,
    presets=PRESETS,
    run=run,
)

__all__ = [
    "CLAIMS", "FULL_STAGES", "IMG_CONTEXT", "PAPER", "PRESETS", "PROGRESSIVE_STAGES",
    "STAGES", "VLM", "WEIGHTINGS", "Config", "Example", "FilterConfig", "MLPProjector",
    "Stage", "Tiling", "ViT", "ViTConfig", "VLMConfig", "accuracy", "build_prompt",
    "candidate_grids", "closest_grid", "collate", "duplicate_lines", "dynamic_preprocess",
    "encode_record", "encode_text_record", "extract_answer", "filter_records",
    "is_repetitive", "loss_weights", "majority_vote", "make_tokenizer", "pixel_shuffle",
    "pretrain_vit",
    "repetition_rate", "repetition_score", "run", "sample_answers", "set_trainable",
    "tiles_to_tensor", "tokens_to_grid", "train_llm_text", "train_stage", "vote_vs_greedy",
    "weighted_lm_loss",
]  # fmt: skip
