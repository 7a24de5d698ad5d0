"""Building a finetuning dataset from any sampler: sample, judge, filter by final answer.

`build_dataset` works with any `Sampler` (a local decoder, an OpenAI-compatible endpoint)
and any task given a prompt function and a judge; the defaults are iGSM's (the problem text
as the prompt, `judge_igsm`). `igsm_sampler` wraps a core decoder trained on the retry
paper's documents as a `DecoderSampler`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from minirepro.core.tokenizer import WordTokenizer
from minirepro.papers.retry.data import SEP
from minirepro.papers.sampling.budget import Sampled, sample_at_budget
from minirepro.papers.sampling.metrics import (
    DataStats,
    Judgement,
    data_stats,
    filter_correct,
    judge_igsm,
)
from minirepro.papers.sampling.samplers import DecoderSampler, Sampler

__all__ = ["SampledData", "build_dataset", "igsm_sampler"]


@dataclass(frozen=True)
class SampledData:
    """A sampled, judged and filtered dataset.

    Attributes:
        judged: P lists of k judged samples.
        pairs: The training pairs: (problem, solution) for every answer-correct sample.
        stats: Coverage, diversity, FPR of the samples.
        sampled: The raw samples with their measured tokens and FLOPs.
    """

    judged: list[list[Judgement]]
    pairs: list[tuple[Any, str]]
    stats: DataStats
    sampled: Sampled


def build_dataset(
    sampler: Sampler,
    problems: Sequence[Any],
    temperature: float,
    *,
    k: int | None = None,
    flops: float | None = None,
    first: int = 1,
    prompt: Callable[[Any], str] = lambda p: p.text,
    judge: Callable[[Any, Sequence[str]], list[Judgement]] = judge_igsm,
) -> SampledData:
    """Sample ``k`` solutions per problem (or as many as ``flops`` buy), judge them and keep
    the answer-correct ones.

    Args:
        sampler: Any `Sampler`.
        problems: P problems (iGSM `Problem`s with the default ``prompt`` and ``judge``).
        temperature: Sampling temperature.
        k: Samples per problem (exclusive with ``flops``).
        flops: Sampling budget, 2 · params · generated tokens (exclusive with ``k``).
        first: First round's samples per problem under a budget (`sample_at_budget`).
        prompt: Problem -> prompt text.
        judge: (problem, its sampled texts) -> one `Judgement` per text.

    Returns:
        The `SampledData`.
    """
    sampled = sample_at_budget(
        sampler, [prompt(p) for p in problems], temperature, k=k, flops=flops, first=first
    )
    judged = [judge(p, texts) for p, texts in zip(problems, sampled.texts, strict=True)]
    if any(len(j) != len(t) for j, t in zip(judged, sampled.texts)):
        raise ValueError("judge must return one Judgement per sampled text")
    kept = filter_correct(judged)
    pairs = [(p, j.text) for p, js in zip(problems, kept) for j in js]
    return SampledData(judged, pairs, data_stats(judged), sampled)


def igsm_sampler(
    model: nn.Module,
    tok: WordTokenizer,
    max_new_tokens: int,
    seed: int = 0,
    documents: bool = True,
    batch_size: int = 256,
) -> DecoderSampler:
    """A `DecoderSampler` for a decoder trained on the retry paper's iGSM documents: the
    prompt ``<bos> problem <sep>``, a stop at ``<eos>``, special tokens kept in the text (so
    a stray one shows, and fails the checker)."""
    sep = tok.token_to_id(SEP)
    return DecoderSampler(
        model,
        encode=lambda text: [tok.bos_id, *tok.encode(text), sep],
        decode=lambda ids: tok.decode(ids, skip_special=False),
        stop_tokens=[tok.eos_id],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        pad_id=tok.pad_id,
        documents=documents,
        seed=seed,
    )
