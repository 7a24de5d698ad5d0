"""Writing in the Margins: segment-wise prefill, margins from the KV cache, final answer.

One `WiMSession` answers one query about one context:

1. the system prompt and the opening of the user turn are prefilled, then the context's
   segments one by one (chunked prefill);
2. after each segment the cache length L is recorded, the extractive instruction is
   prefilled and a margin generated greedily; the cache is cropped back to L, so the margin
   and its instruction leave no positions behind (the next segment continues at L);
3. the margin is classified as relevant in a separate cache (YES/NO prompt);
4. `answer()` prefills the relevant margins between <margins> tags and the question, and
   generates the answer. Called before every segment is read (early exit), it answers from
   the segments read so far.

Iterating over a session yields each `Margin` as it is written, so a caller can show
progress and stop early; `run_wim` does the whole loop with an `on_margin` callback and an
`early_exit` rule.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from minirepro.papers.wim.lm import LM, as_lm, chat_frame, generate_text, prefill
from minirepro.papers.wim.segment import Segment, segment_context

__all__ = [
    "Margin",
    "WiMConfig",
    "WiMOutput",
    "WiMSession",
    "classify_margin",
    "final_prompt",
    "run_wim",
    "stop_after",
]

SYSTEM_PROMPT = "You are a helpful assistant. Read the document the user gives and answer from it."
# The paper's extractive-summary instruction (spec: "Given the above context, extract all
# information relevant to the query ... answer "I don't know."").
EXTRACT_INSTRUCTION = (
    'Given the above context, extract all information relevant to the query: "{query}". '
    'If the context is not relevant to the query, answer "I don\'t know."'
)
CLASSIFY_PROMPT = (
    'I asked an assistant whether a piece of a document is related to the query: "{query}". '
    "This is its answer:\n```text\n{margin}\n```\n"
    "Does the answer contain information about the query? "
    "Reply YES if it does, NO if it says the piece is not related. "
    "Reply in the format <YES/NO>#<explanation>."
)
FINAL_QUESTION = "{query} Answer briefly."


@dataclass
class WiMConfig:
    """How WiM reads a context.

    Attributes:
        segment_tokens: most tokens per segment (the paper: 4096 on 8B models).
        prefill_chunk: tokens per forward call of the chunked prefill.
        max_margin_tokens: margin length ("≤ 100 tokens").
        max_answer_tokens: final answer length.
        classifier: "model" (the paper: YES/NO from the same LM in its own cache), or "all"
            (keep every margin that is not "I don't know").
        system_prompt: system message before segment 0.
    """

    segment_tokens: int = 1024
    prefill_chunk: int = 512
    max_margin_tokens: int = 100
    max_answer_tokens: int = 48
    classifier: str = "model"
    system_prompt: str = SYSTEM_PROMPT

    def __post_init__(self) -> None:
        for name in ("segment_tokens", "prefill_chunk", "max_margin_tokens", "max_answer_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.classifier not in ("model", "all"):
            raise ValueError(f"classifier must be 'model' or 'all', got {self.classifier!r}")


@dataclass
class Margin:
    """A note written after one segment.

    Attributes:
        segment: the segment it was written from.
        text: the margin.
        relevant: the classifier's verdict.
        classifier_output: the classifier's raw reply ("" with classifier="all").
        seconds: time from the session's start to when the margin was classified.
    """

    segment: Segment
    text: str
    relevant: bool
    classifier_output: str
    seconds: float


@dataclass
class WiMOutput:
    """What a WiM run produced and what it cost.

    Attributes:
        answer: the final answer.
        margins: every margin, in segment order.
        segments_read: segments prefilled before answering (fewer after an early exit).
        n_segments: segments of the context.
        prefill_tokens: prompt tokens prefilled (system prompt, segments, instructions,
            classifier prompts, final prompt with margins).
        generated_tokens: tokens generated (margins, classifier decisions, answer); each
            costs one decoding step, so prefill + generated is what the model processed.
        time_to_first_margin: seconds from the start to the first classified margin.
        time_to_answer: seconds from the start to the finished answer.
    """

    answer: str
    margins: list[Margin]
    segments_read: int
    n_segments: int
    prefill_tokens: int
    generated_tokens: int
    time_to_first_margin: float
    time_to_answer: float

    @property
    def relevant_margins(self) -> list[Margin]:
        return [m for m in self.margins if m.relevant]


def final_prompt(query: str, margins: list[str], suffix: str) -> str:
    """The text after the context: the margins in <margins> tags (if any), the question,
    and the chat template's end of the user turn (`suffix`)."""
    text = "\n\n"
    if margins:
        text += "<margins>\n" + "\n".join(margins) + "\n</margins>\n\n"
    return text + FINAL_QUESTION.format(query=query) + suffix


def _says_unknown(margin: str) -> bool:
    text = margin.strip().lower().replace("’", "'")
    return not text or "i don't know" in text or "i do not know" in text


def classify_margin(
    lm: LM, cache: Any, query: str, margin: str, cfg: WiMConfig
) -> tuple[bool, str, int, int]:
    """Classify a margin as relevant in `cache` (cleared before and after).

    The classifier prompt is prefilled in its own cache and the reply's first token is
    chosen between "YES" and "NO" (the larger logit): a 135M model rarely keeps the
    paper's free-form `<YES/NO>#<explanation>` format, but its YES/NO preference is there.
    With classifier="all", every margin that is not "I don't know" is kept.

    Returns:
        (relevant, "YES"/"NO" with the logit gap, tokens prefilled, tokens generated).
    """
    if cfg.classifier == "all":
        return not _says_unknown(margin), "", 0, 0
    lm.crop(cache, 0)
    before, after = chat_frame(lm.tokenizer, None)
    ids = lm.encode(before + CLASSIFY_PROMPT.format(query=query, margin=margin.strip()) + after)
    logits = prefill(lm, cache, ids, cfg.prefill_chunk)
    yes, no = lm.encode("YES")[0], lm.encode("NO")[0]
    gap = float(logits[yes] - logits[no])
    lm.crop(cache, 0)
    return gap > 0, f"{'YES' if gap > 0 else 'NO'} ({gap:+.2f})", len(ids), 0


class WiMSession:
    """One query over one context; iterate to get margins as they are written.

    Example:
        >>> session = WiMSession(load_smollm2(), context, "Where does Ada work?")
        >>> for margin in session:
        ...     print(margin.text)
        >>> session.answer()

    Args:
        model: anything `as_lm` takes (core Transformer, `Pretrained`, HF causal LM, `LM`).
        context: the long document.
        query: the question.
        cfg: WiM settings.
        tokenizer: needed with a bare model.
    Raises:
        ValueError: an empty query or context, or a context too long for the model.
    """

    def __init__(
        self,
        model: Any,
        context: str,
        query: str,
        cfg: WiMConfig | None = None,
        tokenizer: Any = None,
    ) -> None:
        if not isinstance(query, str) or not query.strip():
            raise ValueError("the query is empty")
        self.lm = as_lm(model, tokenizer)
        self.cfg = cfg or WiMConfig()
        self.query = query.strip()
        self.t0 = time.perf_counter()
        self.segments = segment_context(context, self.cfg.segment_tokens, self.lm.encode)
        self.prefix_ids, self.suffix_text = self._frame()
        n_context = len(self.prefix_ids) + sum(len(s) for s in self.segments)
        if n_context + 2 * self.cfg.max_margin_tokens > self.lm.max_len:
            raise ValueError(
                f"context of {n_context} tokens (with prompt) does not fit the model's "
                f"{self.lm.max_len} positions"
            )
        # Room for the context, one instruction + margin at a time, and the final prompt
        # with every margin; no bigger (attention over a larger buffer is slower on CPUs).
        instruction = self.lm.encode(self._instruction())
        room = len(instruction) + len(self.segments) * (self.cfg.max_margin_tokens + 16)
        room += 2 * self.cfg.max_margin_tokens + self.cfg.max_answer_tokens + 256
        self.cache = self.lm.new_cache(min(self.lm.max_len, n_context + room))
        self.classifier_cache = self.lm.new_cache(
            min(self.lm.max_len, 1024 + 2 * self.cfg.max_margin_tokens)
        )
        self.margins: list[Margin] = []
        self.prefill_tokens = 0
        self.generated_tokens = 0
        self.time_to_first_margin = float("nan")
        self._next = 0
        self._ingest(self.prefix_ids)

    def _frame(self) -> tuple[list[int], str]:
        before, after = chat_frame(self.lm.tokenizer, self.cfg.system_prompt)
        return self.lm.encode(before), after

    def _instruction(self) -> str:
        return "\n\n" + EXTRACT_INSTRUCTION.format(query=self.query) + self.suffix_text

    def _ingest(self, ids: list[int]):
        self.prefill_tokens += len(ids)
        return prefill(self.lm, self.cache, ids, self.cfg.prefill_chunk)

    @property
    def done(self) -> bool:
        """Every segment has been read."""
        return self._next >= len(self.segments)

    def __iter__(self) -> Iterator[Margin]:
        while not self.done:
            yield self.step()

    def step(self) -> Margin:
        """Read the next segment and write, crop and classify its margin."""
        if self.done:
            raise RuntimeError("every segment has been read; call answer()")
        segment = self.segments[self._next]
        self._ingest(segment.ids)
        length = self.lm.cache_len(self.cache)
        logits = self._ingest(self.lm.encode(self._instruction()))
        text, ids = generate_text(self.lm, self.cache, logits, self.cfg.max_margin_tokens)
        self.generated_tokens += len(ids)
        self.lm.crop(self.cache, length)  # the margin uses no positions
        relevant, reply, n_in, n_out = classify_margin(
            self.lm, self.classifier_cache, self.query, text, self.cfg
        )
        self.prefill_tokens += n_in
        self.generated_tokens += n_out
        margin = Margin(segment, text.strip(), relevant, reply, time.perf_counter() - self.t0)
        if not self.margins:
            self.time_to_first_margin = margin.seconds
        self.margins.append(margin)
        self._next += 1
        return margin

    def answer(self, use_margins: bool = True) -> WiMOutput:
        """Answer from the relevant margins and the segments read so far.

        Args:
            use_margins: False answers from the context alone — after reading every segment
                this is the full-context baseline on the very same cache and tokens.
        """
        context_len = self.lm.cache_len(self.cache)
        kept = [m.text for m in self.margins if m.relevant] if use_margins else []
        logits = self._ingest(self.lm.encode(final_prompt(self.query, kept, self.suffix_text)))
        answer, ids = generate_text(self.lm, self.cache, logits, self.cfg.max_answer_tokens)
        self.generated_tokens += len(ids)
        self.lm.crop(self.cache, context_len)  # the session can answer again
        return WiMOutput(
            answer=answer.strip(),
            margins=list(self.margins),
            segments_read=self._next,
            n_segments=len(self.segments),
            prefill_tokens=self.prefill_tokens,
            generated_tokens=self.generated_tokens,
            time_to_first_margin=self.time_to_first_margin,
            time_to_answer=time.perf_counter() - self.t0,
        )


def stop_after(n_relevant: int) -> Callable[[list[Margin]], bool]:
    """An early-exit rule: stop once `n_relevant` margins were classified relevant."""
    if n_relevant < 1:
        raise ValueError(f"n_relevant must be >= 1, got {n_relevant}")

    def rule(margins: list[Margin]) -> bool:
        return sum(m.relevant for m in margins) >= n_relevant

    rule.__name__ = f"stop_after_{n_relevant}_relevant"
    return rule


def run_wim(
    model: Any,
    context: str,
    query: str,
    cfg: WiMConfig | None = None,
    *,
    tokenizer: Any = None,
    on_margin: Callable[[Margin], Any] | None = None,
    early_exit: Callable[[list[Margin]], bool] | None = None,
) -> WiMOutput:
    """WiM end to end: margins streamed to `on_margin`, then the answer.

    Args:
        model, context, query, cfg, tokenizer: as for `WiMSession`.
        on_margin: called with each margin as soon as it is classified.
        early_exit: called with the margins so far after each one; True stops reading and
            answers from what was read (e.g. `stop_after(2)`).
    """
    session = WiMSession(model, context, query, cfg, tokenizer)
    for margin in session:
        if on_margin is not None:
            on_margin(margin)
        if early_exit is not None and early_exit(session.margins):
            break
    return session.answer()
