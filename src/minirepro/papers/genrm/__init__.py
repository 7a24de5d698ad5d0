"""Generative Verifiers: Reward Modeling as Next-Token Prediction (Zhang et al., 2024).

arXiv: https://arxiv.org/abs/2408.15240 (no official code).

Claim: a verifier trained by next-token prediction -- score r = p(Yes | problem, solution,
"Is the answer correct (Yes/No)?") -- beats discriminative reward models and LLM-as-a-judge
in best-of-N; verifying with chain-of-thought (GenRM-CoT) and averaging p(Yes) over K
sampled rationales improves it further; training verification jointly with solution
generation (L = L_SFT(verify) + lambda L_SFT(correct)) helps. Algorithmic tasks: 5% -> 45.3%
(best-of-32).

Implemented here:
- `score`: p(Yes) read at the instruction's position of a core decoder or an HF causal LM,
  normalised over the vocabulary (the paper) or over {Yes, No}; padding-independent;
- `formats`: the tiny models' character format and a text/chat format for pretrained LMs;
- `verifiers`: `GenRM`, `GenRMCoT` (K sampled rationales), `DiscriminativeRM` (a head on
  the same backbone, `minirepro.papers.processbench.StepScorer`), `llm_judge`
  (SmolLM2-135M-Instruct prompted, untrained) and the generator's `sample_solutions`;
- `training`: the generator's SFT, the unified loss and the discriminative RM, all on the
  core trainer; `data`: balanced verification pairs with step-by-step rationales;
- `bestofn`: best-of-N (ties to the lowest index), coverage, pass@1, self-consistency;
- tasks in `minirepro.tasks.algorithmic`: last-letter concatenation and word sorting.

Deviations: tiny character-level decoders trained for seconds stand in for Gemma models,
and the generator's weights stand in for the pretrained LM every verifier starts from;
rationales are written by a program (with slips), not by Gemini. At the quick size the
headline ordering does not reproduce: the tiny verifiers barely beat chance, even on the
training lengths (GenRM-CoT > GenRM > discriminative holds there, all below pass@1). See
NOTES.md.

Run: `minirepro run genrm --preset quick` (smoke: seconds; full: closer to the paper).
"""

from minirepro.papers.genrm.bestofn import (
    best_of_n,
    coverage,
    pass_at_1,
    pick_best,
    self_consistency,
)
from minirepro.papers.genrm.data import Labelled, VerificationData, verification_data
from minirepro.papers.genrm.formats import INSTRUCTION, Example, TextFormat, WordFormat
from minirepro.papers.genrm.repro import CLAIMS, PRESETS, VERIFIERS, Config, run
from minirepro.papers.genrm.score import last_logits, p_yes, yes_scores
from minirepro.papers.genrm.training import (
    LMConfig,
    pad_examples,
    train_discriminative,
    train_generator,
    train_genrm,
    unified_loss,
)
from minirepro.papers.genrm.verifiers import (
    DiscriminativeRM,
    GenRM,
    GenRMCoT,
    llm_judge,
    sample_solutions,
)
from minirepro.registry import Paper

PAPER = Paper(
    id="genrm",
    title="Generative Verifiers: reward modeling as next-token prediction",
    arxiv="2408.15240",
    claims=CLAIMS,
    config=Config,
    presets=PRESETS,
    run=run,
)

__all__ = [
    "CLAIMS",
    "INSTRUCTION",
    "PAPER",
    "PRESETS",
    "VERIFIERS",
    "WordFormat",
    "Config",
    "DiscriminativeRM",
    "Example",
    "GenRM",
    "GenRMCoT",
    "LMConfig",
    "Labelled",
    "TextFormat",
    "VerificationData",
    "best_of_n",
    "coverage",
    "last_logits",
    "llm_judge",
    "p_yes",
    "pad_examples",
    "pass_at_1",
    "pick_best",
    "run",
    "sample_solutions",
    "self_consistency",
    "train_discriminative",
    "train_generator",
    "train_genrm",
    "unified_loss",
    "verification_data",
    "yes_scores",
]
