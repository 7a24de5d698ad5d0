"""Per-request sampling parameters, batched token sampling and incremental detokenisation.

Greedy rows of a batch are decided by one argmax; sampled rows each use their own
`torch.Generator` (seeded per request), so a seeded request draws the same tokens whatever
else shares its batch. Stop strings are found in the incrementally detokenised text; the
text that could still be the start of a stop string is held back until it is not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from minirepro.core.generate import filter_logits


@dataclass
class SamplingParams:
    """How one request's tokens are drawn and when it stops.

    temperature 0 is greedy; top_k 0 and top_p 1.0 disable those filters. A request stops
    after max_tokens tokens, at an eos id (unless ignore_eos), at a token of stop_token_ids
    (kept in the token ids, as eos is) or when its text contains a stop string (cut off).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int):
            raise ValueError(f"max_tokens must be an int, got {self.max_tokens!r}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not isinstance(self.temperature, (int, float)) or not self.temperature >= 0:
            raise ValueError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0: off), got {self.top_k!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise ValueError(f"seed must fit in 64 bits, got {self.seed}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop)
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        self.stop_token_ids = list(self.stop_token_ids)
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise ValueError(
                f"stop_token_ids must be non-negative ints, got {self.stop_token_ids!r}"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def make_generator(params: SamplingParams) -> torch.Generator | None:
    """The request's own random stream (None: the global one)."""
    if params.greedy or params.seed is None:
        return None
    return torch.Generator().manual_seed(params.seed)


def sample_tokens(
    logits: Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> list[int]:
    """Next token of each row.

    Args:
        logits: (B, V) next-token logits.
        params: B sampling parameters, one per row.
        generators: B generators (None: torch's global one); used by sampled rows only.
    Returns:
        B token ids.
    """
    out = logits.argmax(-1).tolist()  # greedy rows, all at once
    for i, p in enumerate(params):
        if p.greedy:
            continue
        row = logits[i : i + 1].float()
        # The max subtracted first: a tiny temperature then sends the others to -inf, never
        # to inf - inf = NaN.
        row = (row - row.max()) / p.temperature
        row = filter_logits(row, p.top_k or None, p.top_p)
        out[i] = int(torch.multinomial(row.softmax(-1), 1, generator=generators[i]))
    return out


class Detokenizer:
    """Incremental text of a growing list of token ids, with stop strings.

    Decodes a small window of the latest tokens per step (not the whole output), waits while
    the newest bytes form an incomplete UTF-8 character, and holds back a tail of the text
    that might be the beginning of a stop string.
    """

    def __init__(self, tokenizer, stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.text = ""  # all text decoded so far (stop string and after removed when found)
        self.emitted = 0  # characters of text already handed out
        self.prefix_offset = 0
        self.read_offset = 0
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token_ids: list[int]) -> None:
        """Append tokens; sets `stopped` when the text now contains a stop string."""
        if self.tokenizer is None or self.stopped:
            return
        self.ids.extend(token_ids)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            old_len = len(self.text)
            self.text += full[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            if self.stop:
                longest = max(len(s) for s in self.stop)
                start = max(0, old_len - longest + 1)
                hits = [i for s in self.stop if (i := self.text.find(s, start)) >= 0]
                if hits:
                    self.text = self.text[: min(hits)]
                    self.stopped = True

    def delta(self, final: bool) -> str:
        """Text not handed out yet; while not final, minus a possible stop-string prefix."""
        end = len(self.text)
        if not final and self.stop:
            end -= self._held_back()
        if end <= self.emitted:
            return ""
        out = self.text[self.emitted : end]
        self.emitted = end
        return out

    def _held_back(self) -> int:
        """Length of the longest tail of text that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best
