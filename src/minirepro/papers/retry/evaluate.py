"""Evaluate a model on iGSM problems: greedy solutions, checked step by step."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from minirepro.core.documents import left_pad_document_ids
from minirepro.core.generate import SamplingParams, generate
from minirepro.core.tokenizer import WordTokenizer
from minirepro.papers.retry.data import left_pad, prompt_ids
from minirepro.tasks.igsm import BACK, CheckResult, Problem, check_solution

__all__ = ["Scores", "solve", "score"]


@dataclass(frozen=True)
class Scores:
    """Accuracy and retry behaviour on a set of problems.

    Attributes:
        accuracy: Share of solutions whose every step is correct and that answer the question.
        back_rate: Share of solutions that contain at least one [BACK].
        progress: Mean share of the needed steps written correctly before the first
            mistake (partial credit; 1.0 for a correct solution).
        n: Number of problems.
    """

    accuracy: float
    back_rate: float
    progress: float
    n: int


@torch.inference_mode()
def solve(
    model: nn.Module,
    tok: WordTokenizer,
    problems: Sequence[Problem],
    max_new_tokens: int,
    batch_size: int = 256,
    documents: bool = False,
) -> list[str]:
    """Greedy solutions of ``problems`` (left-padded batches, KV cache), as text with special
    tokens such as [BACK] kept.

    With ``documents`` the padding is a document of its own (``document_ids``): the model
    neither attends to it nor counts it in positions, as in training on rows with document
    ids. Without it the model sees the padding, as in training without them."""
    model.eval()
    params = SamplingParams(max_new_tokens=max_new_tokens, stop_tokens=(tok.eos_id,))
    out: list[str] = []
    for i in range(0, len(problems), batch_size):
        chunk = problems[i : i + batch_size]
        prompts = [prompt_ids(tok, p) for p in chunk]
        ids = left_pad(prompts, tok.pad_id)  # (B, S)
        docs = left_pad_document_ids([len(p) for p in prompts], ids.shape[1]) if documents else None
        for row in generate(model, ids, params, document_ids=docs):
            out.append(tok.decode(row, skip_special=False))
    return out


def score(
    problems: Sequence[Problem], solutions: Sequence[str]
) -> tuple[Scores, list[CheckResult]]:
    """Check each solution; the share fully correct and the share using [BACK]."""
    if len(problems) != len(solutions):
        raise ValueError(f"{len(problems)} problems but {len(solutions)} solutions")
    checks = [check_solution(p, s) for p, s in zip(problems, solutions)]
    n = max(1, len(checks))
    acc = sum(c.correct for c in checks) / n
    back = sum(BACK in s for s in solutions) / n
    progress = 0.0
    for p, c in zip(problems, checks):
        needed = set(p.needed)
        done = {st.param for st in c.steps if st.ok and not st.back and st.param in needed}
        progress += len(done) / len(needed)
    return Scores(acc, back, progress / n, len(checks)), checks
