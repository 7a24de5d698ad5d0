"""Accuracy, repetition of sampled outputs, and greedy vs majority vote."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from minirepro.core.generate import SamplingParams
from minirepro.core.tokenizer import Tokenizer
from minirepro.papers.internvl.filtering import is_repetitive
from minirepro.papers.internvl.training import Example, collate
from minirepro.papers.internvl.vlm import VLM
from minirepro.papers.internvl.voting import extract_answer, majority_vote

__all__ = ["accuracy", "prompt_ids", "repetition_rate", "sample_answers", "vote_vs_greedy"]


@torch.inference_mode()
def accuracy(vlm: VLM, examples: Sequence[Example], pad_id: int, batch_size: int = 64) -> dict:
    """Greedy answer accuracy per question kind, from one teacher-forced pass.

    A greedy decode reproduces the reference answer exactly when every answer position's
    argmax (end token included) is the reference token, so this equals decoding greedily and
    comparing, at the cost of one forward pass.

    Returns:
        ``{kind: exact-match %}``, ``all``, and ``{kind}_token`` (% of answer tokens right).
    """
    hits: dict[str, list[float]] = {}
    tokens: dict[str, list[float]] = {}
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        b = collate(chunk, pad_id)
        pred = vlm(b["input_ids"], b["tiles"]).argmax(-1)  # (B, S)
        mask = b["labels"] != -100
        right = (pred == b["labels"]) | ~mask
        for e, ok, r, m in zip(chunk, right.all(-1).tolist(), right, mask):
            hits.setdefault(e.kind, []).append(100.0 * ok)
            tokens.setdefault(e.kind, []).append(100.0 * float(r[m].float().mean()))
    out = {k: sum(v) / len(v) for k, v in hits.items()}
    out.update({f"{k}_token": sum(v) / len(v) for k, v in tokens.items()})
    out["all"] = sum(sum(v) for v in hits.values()) / sum(len(v) for v in hits.values())
    return out


def prompt_ids(e: Example) -> list[int]:
    """The prompt part of an example (up to the position predicting the first answer id)."""
    first = next(i for i, x in enumerate(e.labels) if x != -100)
    return e.ids[: first + 1]


def sample_answers(
    vlm: VLM, tok: Tokenizer, examples: Sequence[Example], params: SamplingParams
) -> list[str]:
    """One decoded answer per example; prompts of equal length are decoded as one batch."""
    groups: dict[int, list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(len(prompt_ids(e)), []).append(i)
    out = [""] * len(examples)
    for idx in groups.values():
        ids = torch.tensor([prompt_ids(examples[i]) for i in idx])  # (B, S)
        tiles = torch.cat([examples[i].tiles for i in idx])
        for i, row in zip(idx, vlm.generate(ids, tiles, params)):
            out[i] = tok.decode(row)
    return out


def repetition_rate(
    vlm: VLM, tok: Tokenizer, examples: Sequence[Example], params: SamplingParams
) -> float:
    """% of sampled answers that loop (`is_repetitive`, or running to max_new_tokens)."""
    texts = sample_answers(vlm, tok, examples, params)
    flagged = [is_repetitive(t, max_words=params.max_new_tokens) for t in texts]
    return 100.0 * sum(flagged) / max(1, len(texts))


def vote_vs_greedy(
    vlm: VLM, tok: Tokenizer, examples: Sequence[Example], answers: Sequence[str],
    n_samples: int = 8, temperature: float = 1.0, max_new_tokens: int = 24, seed: int = 0,
) -> dict[str, float]:  # fmt: skip
    """Chain-of-thought accuracy (%) of the greedy answer and of the majority vote over
    `n_samples` sampled chains; `answers` are the reference final answers."""
    stop = (tok.eos_id,)
    greedy_p = SamplingParams(max_new_tokens=max_new_tokens, stop_tokens=stop)
    greedy = vote = 0
    for i, (e, ref) in enumerate(zip(examples, answers)):
        ids = torch.tensor([prompt_ids(e)])
        (g,) = vlm.generate(ids, e.tiles, greedy_p)
        greedy += extract_answer(tok.decode(g)) == ref
        p = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=temperature, stop_tokens=stop,
            seed=seed * 100_003 + i,
        )  # fmt: skip
        rows = vlm.generate(ids.expand(n_samples, -1), e.tiles.repeat(n_samples, 1, 1, 1), p)
        vote += majority_vote([extract_answer(tok.decode(r)) for r in rows]) == ref
    n = max(1, len(examples))
    return {"greedy": 100.0 * greedy / n, "vote": 100.0 * vote / n}
