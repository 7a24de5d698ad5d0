"""Sentence-aware segmentation of a long context into token-budgeted segments.

The context is cut into sentence pieces that cover it exactly: every piece after the first
starts with the whitespace that precedes its sentence, so joining the pieces gives the
context back character for character. Pieces are packed greedily into segments of at most
`budget` tokens. A piece longer than the budget is split at word boundaries (and a single
word longer than the budget at token boundaries), never dropped — the reference
implementation loses the sentence that overflows a segment, and every sentence after a
segment is full is at risk.

A segment's token ids are the concatenation of its pieces' ids, each piece encoded on its
own, so the budget holds exactly for the ids that are prefilled.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Segment", "segment_context", "split_sentences"]

Encode = Callable[[str], list[int]]
Decode = Callable[[Sequence[int]], str]

# A sentence ends at . ! ? (with closing quotes/brackets) followed by whitespace, or at a
# line break (not after a list number such as "12."). The split point is after the
# punctuation and before the whitespace.
_BOUNDARY = re.compile(r"(?<=[.!?])(?<![0-9]\.)(?=\s)|(?<=[.!?][\"'\)\]])(?=\s)|(?=\n)")


def split_sentences(text: str) -> list[str]:
    """Sentence pieces that join back to `text` exactly.

    Every piece but the first starts with the whitespace before its sentence. Pieces made
    of whitespace only are merged into their neighbour.

    Args:
        text: any string.
    Returns:
        pieces with `"".join(pieces) == text` (empty list for an empty text).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    cuts = sorted({m.start() for m in _BOUNDARY.finditer(text)} - {0, len(text)})
    pieces, start = [], 0
    for cut in [*cuts, len(text)]:
        piece = text[start:cut]
        if pieces and not piece.strip():
            pieces[-1] += piece  # trailing whitespace joins the sentence before it
        elif pieces and not pieces[-1].strip():
            pieces[-1] += piece  # leading whitespace joins the sentence after it
        elif piece:
            pieces.append(piece)
        start = cut
    return pieces


@dataclass
class Segment:
    """A run of whole sentences (or parts of one over-long sentence).

    Attributes:
        index: position among the context's segments.
        text: the exact characters of the context the segment covers.
        ids: token ids to prefill, len(ids) <= the budget.
        start, end: character span of `text` in the context.
    """

    index: int
    text: str
    ids: list[int]
    start: int
    end: int

    def __len__(self) -> int:
        return len(self.ids)


def _split_long(piece: str, budget: int, encode: Encode) -> list[tuple[str, list[int]]]:
    """Parts of one over-long piece, each of at most `budget` tokens, joining to `piece`."""
    words = re.findall(r"\s*\S+|\s+$", piece)  # each word with its leading whitespace
    parts: list[tuple[str, list[int]]] = []
    text, ids = "", []
    for word in words:
        w_ids = encode(word)
        if len(w_ids) > budget:  # one word longer than a segment: cut its characters
            if text:
                parts.append((text, ids))
                text, ids = "", []
            parts.extend(_split_chars(word, budget, encode))
            continue
        if ids and len(ids) + len(w_ids) > budget:
            parts.append((text, ids))
            text, ids = "", []
        text, ids = text + word, ids + w_ids
    if text:
        parts.append((text, ids))
    return parts


def _split_chars(word: str, budget: int, encode: Encode) -> list[tuple[str, list[int]]]:
    """Longest character prefixes that encode within `budget` tokens (binary search)."""
    parts = []
    while word:
        lo, hi = 1, len(word)  # a single character always fits a budget >= its token count
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(encode(word[:mid])) <= budget:
                lo = mid
            else:
                hi = mid - 1
        ids = encode(word[:lo])
        if len(ids) > budget:
            raise ValueError(
                f"segment budget {budget} is smaller than one character's tokens ({len(ids)})"
            )
        parts.append((word[:lo], ids))
        word = word[lo:]
    return parts


def segment_context(text: str, budget: int, encode: Encode) -> list[Segment]:
    """Pack the context's sentences into segments of at most `budget` tokens.

    Args:
        text: the context.
        budget: the most tokens per segment (the paper uses 4096; 512-1024 here).
        encode: text -> token ids, without special tokens.
    Returns:
        segments whose texts join back to `text` and whose ids are each <= budget long.
    Raises:
        ValueError: budget < 1 or an empty context.
    """
    if not isinstance(budget, int) or budget < 1:
        raise ValueError(f"segment budget must be a positive int, got {budget!r}")
    if not text.strip():
        raise ValueError("the context is empty")
    units: list[tuple[str, list[int]]] = []
    for piece in split_sentences(text):
        ids = encode(piece)
        units.extend(_split_long(piece, budget, encode) if len(ids) > budget else [(piece, ids)])
    segments: list[Segment] = []
    cur_text, cur_ids, start = "", [], 0
    for piece, ids in units:
        if cur_ids and len(cur_ids) + len(ids) > budget:
            end = start + len(cur_text)
            segments.append(Segment(len(segments), cur_text, cur_ids, start, end))
            cur_text, cur_ids, start = "", [], end
        cur_text, cur_ids = cur_text + piece, cur_ids + ids
    if cur_text:
        segments.append(Segment(len(segments), cur_text, cur_ids, start, start + len(cur_text)))
    return segments
