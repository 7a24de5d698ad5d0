"""Accuracy and generated tokens of a trained model on held-out records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from minirepro.core.tokenizer import WordTokenizer
from minirepro.core.train import lm_loss
from minirepro.papers.coconut.curriculum import (
    Curriculum,
    collate,
    inference_prompt,
    stage_example,
    tokenize_record,
)
from minirepro.papers.coconut.latent import Coconut
from minirepro.tasks.prosqa import options

__all__ = ["answer_loss", "evaluate", "extract_answer", "named_option"]


@torch.no_grad()
def answer_loss(
    net: Coconut,
    tok: WordTokenizer,
    records: Sequence[dict[str, Any]],
    method: str,
    cur: Curriculum,
    batch_size: int = 125,
) -> float:
    """Mean cross-entropy of the learned tokens of the method's final-stage sequences
    (for CoT the steps and the answer, else the answer), teacher-forced."""
    net.eval()
    final = cur.max_latent_stage + 1
    total, count = 0.0, 0
    for lo in range(0, len(records), batch_size):
        recs = [tokenize_record(tok, r) for r in records[lo : lo + batch_size]]
        x, y, d = collate([stage_example(r, method, final, cur, tok) for r in recs], tok.pad_id)
        n = int((y != -100).sum())
        total += float(lm_loss(net, (x, y, d))) * n
        count += n
    return total / max(1, count)


def extract_answer(tok: WordTokenizer, generated: Sequence[int]) -> list[int]:
    """The ids after the last "###" marker (the whole output when there is none)."""
    hash_id = tok.token_to_id("#")
    ids = list(generated)
    for i in range(len(ids) - 3, -1, -1):
        if ids[i : i + 3] == [hash_id] * 3:
            return ids[i + 3 :]
    return ids


def named_option(tok: WordTokenizer, answer: Sequence[int], record: dict[str, Any]) -> int | None:
    """Which option an answer names: 0 the target, 1 the other option, None for neither or both.

    The answer (ids after "###") names an option when exactly one of the question's two
    concepts occurs in it, whatever else it says ("Tom is a wumpus." and "wumpus" both name
    the wumpus); exact match is stricter.
    """
    words = set(tok.decode(list(answer)).replace(".", " ").split())
    hits = [i for i, w in enumerate(options(record)) if w in words]
    return hits[0] if len(hits) == 1 else None


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
        ``accuracy`` (percent, exact match), ``named`` (percent of answers that name one of
        the two options, `named_option`), ``choice_accuracy`` (percent of those naming the
        right one; 50 is guessing; 0 when none names an option), ``tokens_per_answer`` (mean new tokens, EOS included, plus
        the continuous thoughts or pauses, as the paper counts them) and ``outputs`` (the
        decoded generations).
    """
    net.eval()
    recs = [tokenize_record(tok, r) for r in records]
    prompts = [inference_prompt(r, method, cur, tok) for r in recs]
    thoughts = cur.n_thoughts if method not in ("cot", "no_cot") else 0
    correct, tokens, named, chose, outputs = 0, 0, 0, 0, []
    for lo in range(0, len(prompts), batch_size):
        gen = net.generate(prompts[lo : lo + batch_size], max_new_tokens, [tok.eos_id])
        for i, (rec, g) in enumerate(zip(recs[lo : lo + batch_size], gen)):
            answer = rec.answer[3:-1]  # without "###" and EOS
            said = extract_answer(tok, g)
            correct += said == answer
            pick = named_option(tok, said, records[lo + i])
            named += pick is not None
            chose += pick == 0
            tokens += len(g) + 1 + thoughts
            outputs.append(tok.decode(g))
    n = max(1, len(prompts))
    return {
        "accuracy": 100.0 * correct / n,
        "named": 100.0 * named / n,
        "choice_accuracy": 100.0 * chose / max(1, named),
        "tokens_per_answer": tokens / n,
        "outputs": outputs,
    }
