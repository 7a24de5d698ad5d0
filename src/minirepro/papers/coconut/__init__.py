"""Coconut: Training Large Language Models to Reason in a Continuous Latent Space
(Hao, Sukhbaatar, Su, Li, Hu, Weston, Tian, 2024).

arXiv: https://arxiv.org/abs/2412.06769 · reference: facebookresearch/coconut.

Claim: feeding the last hidden state back as the next input embedding (a "continuous
thought") instead of decoding a word lets a model reason more efficiently. Trained with a
curriculum that replaces the language reasoning steps by thoughts stage by stage, GPT-2
reaches 97.0% on ProsQA (CoT 77.5, No-CoT 76.7, pause-as-thought 96.6, no curriculum
76.1) with far fewer generated tokens, and its thoughts hold several frontier nodes of a
breadth-first search at once.

Implemented here:
- data in `minirepro.tasks.prosqa`: a seeded ProsQA-style generator matched to the paper's
  statistics, the reference's JSON records, a loader for the reference's files;
- `latent`: `Coconut`, the multi-pass forward that feeds each latent position the previous
  final-norm hidden state while reusing the KV cache, for the core decoder and any
  transformers causal LM (same code path), and generation with a fixed number of thoughts;
- `pretrained`: `add_thought_tokens` readies a user's pretrained transformers model and
  tokenizer (the markers added as special tokens, new embedding rows copied from an existing
  token's, as the reference does for GPT-2);
- `reference`: the naive oracle that recomputes the whole sequence at every pass;
- `curriculum`: stages, sequences and labels of Coconut, CoT, No-CoT, pause-as-thought and
  Coconut without curriculum;
- `training`: a method through its stages with the core trainer (optimizer reset per stage);
- `evaluate`: accuracy and tokens per answer; `analysis`: the BFS frontier analysis (the paper's
  language-mode probe after k thoughts);
- `repro`: `run(cfg, out)`.

Deviations: a 2-layer decoder trained from scratch instead of pretrained GPT-2, smaller
graphs and a shorter curriculum at the quick preset, word tokens without newlines. See
NOTES.md for the measurements.

Run: `minirepro run coconut --preset quick`.
"""

from minirepro.papers.coconut.analysis import (
    CLASSES,
    frontier_analysis,
    plot_frontier,
    thought_decode_analysis,
)
from minirepro.papers.coconut.curriculum import (
    BOT,
    EOT,
    LATENT,
    METHODS,
    PAUSE,
    Curriculum,
    Example,
    TokenizedRecord,
    build_tokenizer,
    collate,
    inference_prompt,
    mixed_stages,
    stage_example,
    tokenize_record,
)
from minirepro.papers.coconut.evaluate import evaluate, extract_answer
from minirepro.papers.coconut.latent import (
    Coconut,
    CoreBackbone,
    HFBackbone,
    as_backbone,
    latent_columns,
    left_pad,
)
from minirepro.papers.coconut.pretrained import THOUGHT_TOKENS, add_thought_tokens
from minirepro.papers.coconut.reference import naive_latent_forward
from minirepro.papers.coconut.repro import CLAIMS, PAPER_ACCURACY, PRESETS, Config, run
from minirepro.papers.coconut.training import TrainSettings, make_model, train_method
from minirepro.registry import Paper

PAPER = Paper(
    id="coconut",
    title="Coconut: reasoning in a continuous latent space",
    arxiv="2412.06769",
    claims=CLAIMS,
    config=Config,
    presets=PRESETS,
    run=run,
)

__all__ = [
    "BOT",
    "CLAIMS",
    "CLASSES",
    "EOT",
    "LATENT",
    "METHODS",
    "PAPER",
    "PAPER_ACCURACY",
    "PAUSE",
    "PRESETS",
    "Coconut",
    "Config",
    "CoreBackbone",
    "Curriculum",
    "Example",
    "HFBackbone",
    "TokenizedRecord",
    "THOUGHT_TOKENS",
    "TrainSettings",
    "add_thought_tokens",
    "as_backbone",
    "build_tokenizer",
    "collate",
    "evaluate",
    "extract_answer",
    "frontier_analysis",
    "inference_prompt",
    "latent_columns",
    "left_pad",
    "make_model",
    "naive_latent_forward",
    "plot_frontier",
    "run",
    "mixed_stages",
    "stage_example",
    "thought_decode_analysis",
    "tokenize_record",
    "train_method",
]
