"""The Mamba in the Llama: distilling and accelerating hybrid models (Wang et al., arXiv
2408.15237).

https://arxiv.org/abs/2408.15237

Claim: a pretrained transformer distils into a hybrid whose attention layers are mostly
Mamba layers initialised from the attention weights (C ← W_Q, B ← W_K, x ← W_V, out ← W_O),
with little loss of quality; a speculative decoding algorithm for hybrids (Mamba layers
roll back by recomputing the accepted tokens from the last verified state) speeds up their
generation.

Implemented here:
- `MambaMixer` ("mamba", Mamba-1) and `Mamba2Mixer` ("mamba2", multi-head, GQA-shaped)
  token mixers for the core decoder, with a conv + SSM decoding state (`MambaState`);
  outputs and gradients equal transformers' `MambaMixer` / `Mamba2Mixer` on the same
  weights; `selective_scan` (chunked SSD matmuls for one decay per head, a vectorised
  time loop otherwise);
- `init_from_attention`, `to_hybrid(model, attention_layers)`, `replaced_layers`;
- distillation (`distill`): stage 1 layerwise regression on the teacher's attention outputs,
  stage 2 kl_weight · KL(teacher ‖ student) + ce_weight · CE on teacher-generated text;
  progressive replacement (50% then 25% attention kept) in `repro.py`;
- `speculative_generate` (greedy, K drafts verified in one target pass, `Cache.crop`
  rollback) and drafts: `int8_draft`, `layer_skip_draft`;
- `save_hybrid` / `load_hybrid` (safetensors + config.json + tokenizer/); serve's engine
  serves the saved folder (`minirepro serve --model <dir>`), with a per-sequence
  `MambaState` (decoding rows stacked with `MambaState.stack` / `unstack`).

Deviations (see NOTES.md): at the quick size only the top 8 of SmolLM2's 30 layers are
touched (4 replaced at 50%, 6 at 25%), on ~1.3k teacher tokens, and only the Mamba layers
train; no DPO stage; the draft is an int8 copy of the target, not a separate small model.

Run: `minirepro run hybrid` (quick preset); benchmark: `python benchmarks/hybrid.py`.
"""

from minirepro.papers.hybrid.checkpoint import load_hybrid, save_hybrid
from minirepro.papers.hybrid.convert import init_from_attention, replaced_layers, to_hybrid
from minirepro.papers.hybrid.distill import (
    DistillConfig,
    TeacherRecord,
    distill,
    evaluate_student,
    record_teacher,
    teacher_text,
)
from minirepro.papers.hybrid.mamba import Mamba2Mixer, MambaMixer, MambaState, checkpoint_states
from minirepro.papers.hybrid.repro import CLAIMS, PRESETS, Config, run
from minirepro.papers.hybrid.scan import recurrent_scan, selective_scan, ssd_scan
from minirepro.papers.hybrid.speculative import (
    SpeculativeStats,
    int8_draft,
    layer_skip_draft,
    speculative_generate,
)
from minirepro.registry import Paper

PAPER = Paper(
    id="hybrid",
    title="The Mamba in the Llama: Distilling and Accelerating Hybrid Models",
    arxiv="2408.15237",
    claims=CLAIMS,
    config=Config,
    presets=PRESETS,
    run=run,
)

__all__ = [
    "CLAIMS",
    "PAPER",
    "PRESETS",
    "Config",
    "DistillConfig",
    "Mamba2Mixer",
    "MambaMixer",
    "MambaState",
    "SpeculativeStats",
    "TeacherRecord",
    "checkpoint_states",
    "distill",
    "evaluate_student",
    "init_from_attention",
    "int8_draft",
    "layer_skip_draft",
    "load_hybrid",
    "record_teacher",
    "recurrent_scan",
    "replaced_layers",
    "run",
    "save_hybrid",
    "selective_scan",
    "speculative_generate",
    "ssd_scan",
    "teacher_text",
    "to_hybrid",
]
