"""Accuracy and generated tokens of a trained model on held-out records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from minirepro.core.tokenizer import WordTokenizer
from minirepro.papers.coconut.curriculum import (
    Curriculum,
    inference_prompt,
    tokenize_record,
)
from minirepro.papers.coconut.latent import Coconut

__all__ = ["evaluate", "extract_answer"]


def extract_answer(tok: WordTokenizer, generated: Sequence[int]) -> list[int]:
    """The ids after the last "###" marker (the whole output when there is none)."""
    hash_id = tok.token_to_id("#")
    ids = list(generated)
    for i in range(len(ids) - 3, -1, -1):
        if ids[i : i + 3] == [hash_id] * 3:
            return ids[i + 3 :]
    return ids


def evaluate(
    net: Coconut,
    tok: WordTokenizer,
    records: Sequence[dict[str, Any]],
    method: str,
    cur: Curriculum,
    *,
    batch_size: int = 125,
    max_new_tokens: int = 64,
) -> dict[str, Any]:
    """Greedy answers with a fixed number of thoughts; exact-match accuracy.

    Returns:
        ``accuracy`` (percent), ``tokens_per_answer`` (mean new tokens, EOS included, plus
        the continuous thoughts or pauses, as the paper counts them) and ``outputs`` (the
        decoded generations).
    """
    net.eval()
    recs = [tokenize_record(tok, r) for r in records]
    prompts = [inference_prompt(r, method, cur, tok) for r in recs]
    thoughts = cur.n_thoughts if method not in ("cot", "no_cot") else 0
    correct, tokens, outputs = 0, 0, []
    for lo in range(0, len(prompts), batch_size):
        gen = net.generate(prompts[lo : lo + batch_size], max_new_tokens, [tok.eos_id])
        for rec, g in zip(recs[lo : lo + batch_size], gen):
            answer = rec.answer[3:-1]  # without "###" and EOS
            correct += extract_answer(tok, g) == answer
            tokens += len(g) + 1 + thoughts
            outputs.append(tok.decode(g))
    n = max(1, len(prompts))
    return {"accuracy": 100.0 * correct / n, "tokens_per_answer": tokens / n, "outputs": outputs}
