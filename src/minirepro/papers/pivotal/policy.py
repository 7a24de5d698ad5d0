"""A decoder as a PTS policy, and iGSM's checker as the oracle.

`LMPolicy.sample(prefix, n)` draws ``n`` completions of one prefix in one batch (``n``
copies of the prefix, the core decoder's KV cache, `minirepro.core.generate`); its
``top_tokens`` reads the next-token distribution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from minirepro.core.documents import left_pad_document_ids
from minirepro.core.generate import SamplingParams, generate
from minirepro.core.tokenizer import WordTokenizer
from minirepro.tasks.igsm import Problem, check_solution

__all__ = ["LMPolicy", "igsm_oracle"]


class LMPolicy:
    """Sampling from a decoder (``model(ids) -> logits (B, S, V)``, ``new_cache``).

    Args:
        model: The decoder; put in eval mode.
        eos_id: Token that ends a response (not returned).
        max_new_tokens: Longest completion.
        temperature: Sampling temperature (1: the policy's own distribution).
        seed: Seeds the sampling; each call draws from ``seed`` plus a call counter, so a
            policy replays the same samples for the same sequence of calls.
    """

    def __init__(
        self,
        model: nn.Module,
        eos_id: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        seed: int = 0,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model = model.eval()
        self.eos_id = eos_id
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.seed = seed
        self.calls = 0

    @torch.inference_mode()
    def sample(self, prefix: Sequence[int], n: int) -> list[list[int]]:
        """``n`` completions of ``prefix`` (token ids), each without its ``eos``."""
        if n < 1 or not len(prefix):
            raise ValueError(f"need n >= 1 and a non-empty prefix, got n={n}, {len(prefix)} tokens")
        self.calls += 1
        params = SamplingParams(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature,
            stop_tokens=(self.eos_id,), seed=self.seed * 1_000_003 + self.calls,
        )  # fmt: skip
        return generate(self.model, [list(prefix)] * n, params)

    @torch.inference_mode()
    def sample_batch(self, prefixes: Sequence[Sequence[int]], n: int) -> list[list[list[int]]]:
        """``n`` completions of each of several prefixes in one left-padded batch (the
        padding a document of its own, `minirepro.core.documents`): the same as calling
        `sample` on each, in one decoding loop. Returns one list of ``n`` per prefix."""
        if n < 1 or not prefixes or not all(len(p) for p in prefixes):
            raise ValueError("need n >= 1 and non-empty prefixes")
        self.calls += 1
        params = SamplingParams(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature,
            stop_tokens=(self.eos_id,), seed=self.seed * 1_000_003 + self.calls,
        )  # fmt: skip
        S = max(len(p) for p in prefixes)
        rows = [[self.eos_id] * (S - len(p)) + list(p) for p in prefixes for _ in range(n)]
        docs = left_pad_document_ids([len(p) for p in prefixes for _ in range(n)], S)
        out = generate(self.model, rows, params, document_ids=docs)
        return [out[i * n : (i + 1) * n] for i in range(len(prefixes))]

    @torch.inference_mode()
    def top_tokens(self, prefix: Sequence[int], k: int) -> list[int]:
        """The ``k`` most likely next tokens after ``prefix``, most likely first."""
        logits = self.model(torch.tensor([list(prefix)]))[0, -1]  # (V,)
        return torch.topk(logits, min(k, logits.shape[-1])).indices.tolist()


def igsm_oracle(problem: Problem, tok: WordTokenizer) -> Callable[[Sequence[int]], bool]:
    """``oracle(response_ids) -> bool``: the decoded solution passes `check_solution`
    (every step right and the question answered)."""

    def oracle(response: Sequence[int]) -> bool:
        return check_solution(problem, tok.decode(list(response), skip_special=False)).correct

    return oracle
