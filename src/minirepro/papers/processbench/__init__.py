"""ProcessBench: Identifying Process Errors in Mathematical Reasoning (Zheng et al., 2024).

arXiv: https://arxiv.org/abs/2412.06559 · reference: QwenLM/ProcessBench (code/run_eval.py).

Claim: on 3,400 expert-labelled step-by-step solutions (subsets gsm8k, math,
olympiadbench, omnimath), the task is to find the earliest wrong step or say there is none;
general LLMs prompted as critics beat process reward models (PRMs), which degrade on
Olympiad-level problems (o1-mini 87.9 average F1, QwQ-32B-Preview 71.5).

Implemented here:
- `records`: the reference's record format, read from a user's JSON / JSONL file with
  errors that name the record and the field, or skipped and counted (`load_records`);
- `metric`: acc_error, acc_correct and F1 per subset and their average, as the reference
  computes them (`score`, `Report.table`);
- `critic`: the critic prompt with ``<paragraph_i>`` tags, the ``\\boxed{}`` answer parser,
  majority vote, and `Critic`, any chat model (e.g. SmolLM2-135M-Instruct from
  `minirepro.core.pretrained`) decoded in batches by the serve engine;
- `verifier`: tiny step verifiers (the core decoder with a per-step head) trained by the
  core trainer with process labels (PRM) or outcome labels only, the first step below a
  threshold as prediction, the threshold chosen by F1 on a calibration subset;
- `synthetic`: a ProcessBench-format benchmark from `minirepro.tasks.igsm` with injected
  first errors (arithmetic, dependency, skipped step; propagated or not) at known steps,
  easy/hard subsets by op;
- `repro`: `minirepro run processbench`; `minirepro processbench eval FILE` scores a file.

Deviations: synthetic iGSM problems instead of the human-labelled set (no hub access; the
loader and metric take the real files); verifiers of ~100k parameters trained for minutes;
the critic is a 135M model (the paper's critics are 7B-72B and o1); our own wording of the
critic prompt. See NOTES.md.

Run: `minirepro run processbench --preset quick` (smoke: seconds; full: closer to the paper).
"""

from minirepro.papers.processbench.critic import (
    CRITIC_TEMPLATE,
    Critic,
    CriticOutput,
    critic_prompt,
    majority_vote,
    parse_answer,
    tag_steps,
)
from minirepro.papers.processbench.metric import (
    Report,
    SubsetScore,
    f1_score,
    score,
    subset_score,
)
from minirepro.papers.processbench.records import (
    LoadResult,
    Record,
    RecordError,
    load_records,
    parse_record,
    write_records,
)
from minirepro.papers.processbench.repro import CLAIMS, PRESETS, Config, fac_accuracy, run
from minirepro.papers.processbench.synthetic import (
    ERROR_KINDS,
    SynthConfig,
    easy_hard,
    inject_error,
    synthetic_records,
)
from minirepro.papers.processbench.verifier import (
    StepScorer,
    Verifier,
    VerifierConfig,
    build_tokenizer,
    choose_threshold,
    encode_record,
    first_below,
    step_targets,
    train_verifier,
)
from minirepro.registry import Paper

PAPER = Paper(
    id="processbench",
    title="ProcessBench: identifying process errors",
    arxiv="2412.06559",
    claims=CLAIMS,
    config=Config,
    presets=PRESETS,
    run=run,
)

__all__ = [
    "CLAIMS",
    "CRITIC_TEMPLATE",
    "ERROR_KINDS",
    "PAPER",
    "PRESETS",
    "Config",
    "Critic",
    "CriticOutput",
    "LoadResult",
    "Record",
    "RecordError",
    "Report",
    "StepScorer",
    "SubsetScore",
    "SynthConfig",
    "Verifier",
    "VerifierConfig",
    "build_tokenizer",
    "choose_threshold",
    "critic_prompt",
    "easy_hard",
    "encode_record",
    "f1_score",
    "fac_accuracy",
    "first_below",
    "inject_error",
    "load_records",
    "majority_vote",
    "parse_answer",
    "parse_record",
    "run",
    "score",
    "step_targets",
    "subset_score",
    "synthetic_records",
    "tag_steps",
    "train_verifier",
    "write_records",
]
