"""Physics of Language Models: Part 2.2, How to Learn From Mistakes on Grade-School Math
Problems (Ye, Xu, Li, Allen-Zhu, 2024).

arXiv: https://arxiv.org/abs/2408.16293 · reference: facebookresearch/iGSM (generator).

Claim: pretraining on "retry data" — solutions in which a wrong step is started, marked
[BACK] and followed by the correct step — makes a model more accurate than pretraining on
the same number of tokens of error-free solutions (iGSM-med, op=23: 78% -> 94% at retry
rate 0.5); higher rates help; masking the erroneous tokens is unnecessary; cheap fake
mistakes (retry_weak) work nearly as well; the models rarely retry at inference.

Implemented here:
- the data: `minirepro.tasks.igsm` (generator, step-by-step checker, retry /
  retry_weak / retry_miss with error masks), shared with other papers;
- `data`: documents and token-matched batches (`Variant`, `document`, `bucket_batches`:
  whole documents bucketed by length; `pack_rows`: rows packed with whole documents);
- `evaluate`: greedy solutions with the core decoder and KV cache, checked step by step
  (`solve`, `score`);
- `repro`: `Config`, `PRESETS`, `run(cfg, out)`: the core decoder trained on error-free
  data and on retry data at each rate, masked and retry_weak, per seed; accuracy per op bin
  and the share of solutions that use [BACK].

Deviations: a tiny decoder and small problems (quick: a 2-layer d=64 decoder, 2400 steps,
op 1-2 in training, two-layer two-item structures with 3 sentences in dependency order,
arithmetic mod 7, sequential symbols, one token per name; error-free, retry 0.1 / 0.3 /
0.5, masked and retry_weak at 0.1, 2 seeds) instead of a 12-layer GPT-2 on iGSM-med; the
loss skips the problem text. At the quick budget every model solves 0% of op 3 (beyond
training), so the headline compares op 2, the hardest bin inside training: retry 0.1 is
2.7 points ahead of error-free there (below the +5 criterion), but behind at 3600 steps;
rates 0.3 and 0.5 are far behind. See NOTES.md for the measured figures and the probes.

Run: `minirepro run retry --preset quick` (smoke: seconds; full: closer to the paper).
"""

from minirepro.papers.retry.data import (
    NameTokenizer,
    Variant,
    bucket_batches,
    build_tokenizer,
    document,
    pack_rows,
    prompt_ids,
)
from minirepro.papers.retry.evaluate import Scores, score, solve
from minirepro.papers.retry.repro import CLAIMS, PRESETS, Config, run, variants
from minirepro.registry import Paper

PAPER = Paper(
    id="retry",
    title="Physics of LMs 2.2: learning from mistakes (iGSM retry data)",
    arxiv="2408.16293",
    claims=CLAIMS,
    config=Config,
    presets=PRESETS,
    run=run,
    status="implemented",
)

__all__ = [
    "CLAIMS",
    "PAPER",
    "PRESETS",
    "Config",
    "NameTokenizer",
    "Scores",
    "Variant",
    "bucket_batches",
    "build_tokenizer",
    "document",
    "pack_rows",
    "prompt_ids",
    "run",
    "score",
    "solve",
    "variants",
]
