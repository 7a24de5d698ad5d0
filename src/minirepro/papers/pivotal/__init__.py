"""Phi-4 Technical Report: Pivotal Token Search and DPO (Abdin et al., 2024).

arXiv: https://arxiv.org/abs/2412.08905

Claim: a few tokens of a response decide whether it succeeds; Pivotal Token Search (the
report's Algorithm 1) finds them by estimating p(success | query, prefix) from sampled
completions and splitting the response in halves wherever p jumps by at least p_gap, and
DPO on (query + prefix, chosen token, rejected token) pairs at those tokens is the first of
Phi-4's two DPO stages (the second: whole responses judged by a verifier). Phi-4 (14B)
scores MMLU 84.8, MATH 80.4, HumanEval 82.6. (PTS builds DPO data; it is not an
inference-time pruning method, as the digest in the seeds describes it.)

Implemented here:
- `pts`: `SuccessEstimator` (p from M samples of any policy with ``sample(prefix, n)`` and
  any oracle, cached by prefix), `subdivide` (binary subdivision with p_gap),
  `pivotal_tokens` (single-token pivots of queries with baseline p in [0.2, 0.8]),
  `estimate_bound` (the log bound on p-estimates);
- `pairs`: single-token DPO pairs at pivots (alternatives from the policy's top-k),
  stage-2 pairs of whole responses judged by a verifier, JSONL in TRL's preference format
  (prompt / chosen / rejected), read back with errors that name the line;
- `dpo`: the sigmoid DPO loss (β), summed completion log-probs, reference log-probs
  precomputed or live, `train_dpo` on the core trainer;
- `policy`: the core decoder as a policy (many completions of a prefix in one batch with
  the KV cache) and iGSM's checker as the oracle;
- `synthetic`: self-revision and instruction reversal on iGSM, verified by the checker;
- `repro`: SFT a tiny policy on iGSM (the retry paper's data), PTS, DPO on PTS pairs vs
  full-response DPO with the same number of pairs.

Deviations: a 2-layer d=64 decoder on iGSM op 1-2 (the retry paper's quick task) instead of
a 14B model on MATH and code; the checker is both PTS's oracle and stage 2's verifier; no
multi-agent prompting. See NOTES.md for the measured figures.

Run: `minirepro run pivotal --preset quick` (smoke: seconds; full: closer to the paper).
"""

from minirepro.papers.pivotal.dpo import (
    DPOConfig,
    completion_logps,
    dpo_loss,
    pad_pairs,
    reference_logps,
    train_dpo,
)
from minirepro.papers.pivotal.pairs import (
    PreferencePair,
    pivot_pairs,
    read_jsonl,
    response_pairs,
    write_jsonl,
)
from minirepro.papers.pivotal.policy import LMPolicy, igsm_oracle
from minirepro.papers.pivotal.pts import (
    Pivot,
    Policy,
    PTSConfig,
    SuccessEstimator,
    estimate_bound,
    pivotal_tokens,
    subdivide,
)
from minirepro.papers.pivotal.repro import CLAIMS, PRESETS, Config, run
from minirepro.papers.pivotal.synthetic import Revision, reverse_instruction, self_revise
from minirepro.registry import Paper

PAPER = Paper(
    id="pivotal",
    title="Phi-4: pivotal token search + DPO",
    arxiv="2412.08905",
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
    "DPOConfig",
    "LMPolicy",
    "PTSConfig",
    "Pivot",
    "Policy",
    "PreferencePair",
    "Revision",
    "SuccessEstimator",
    "completion_logps",
    "dpo_loss",
    "estimate_bound",
    "igsm_oracle",
    "pad_pairs",
    "pivot_pairs",
    "pivotal_tokens",
    "read_jsonl",
    "reference_logps",
    "response_pairs",
    "reverse_instruction",
    "run",
    "self_revise",
    "subdivide",
    "train_dpo",
    "write_jsonl",
]
