"""The stage curriculum and the training sequences of Coconut and its baselines.

A record becomes question, then reasoning steps, then "### answer" and EOS (the
reference's ``dataset.py``; our word tokenizer drops the newlines between them). At stage
k of Coconut the first k steps are replaced by k·c latent tokens between <bot> and <eot>;
past ``max_latent_stage`` every step is dropped and the latents stay at
``max_latent_stage``·c ("pad_latent_to_max"). Labels are -100 on the question, the
markers and the latents: only the remaining steps and the answer are learned.

Methods (the paper's Table 1 rows on ProsQA):

- ``coconut``: the curriculum above; latents are continuous thoughts.
- ``cot``: every stage is stage 0 without markers: question, all steps, answer.
- ``no_cot``: question, answer.
- ``pause``: Coconut's curriculum and sequences with a learned <pause> token in place of
  the latents ("pause as thought"); no hidden state is fed back.
- ``no_curriculum``: Coconut trained on its final stage from the start (the paper's
  "w/o curriculum").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from minirepro.core.tokenizer import WordTokenizer
from minirepro.papers.coconut.latent import left_pad

__all__ = [
    "BOT",
    "EOT",
    "LATENT",
    "METHODS",
    "PAUSE",
    "Curriculum",
    "Example",
    "TokenizedRecord",
    "build_tokenizer",
    "check_method",
    "collate",
    "inference_prompt",
    "mixed_stages",
    "stage_example",
    "tokenize_record",
]

BOT, EOT, LATENT, PAUSE = "<bot>", "<eot>", "<latent>", "<pause>"
METHODS: tuple[str, ...] = ("coconut", "cot", "no_cot", "pause", "no_curriculum")


@dataclass(frozen=True)
class Curriculum:
    """When each stage starts and how many latents it has.

    Attributes:
        max_latent_stage: Stages 1..K replace steps by thoughts; stage K+1 drops every step
            ("max_latent_stage: 6" in the reference's ProsQA config).
        c_thought: Thoughts per step ("c = 1 for ProsQA").
        steps_per_stage: Optimizer steps at each stage 0..K (the paper: 5 epochs each).
        final_steps: Optimizer steps at stage K+1 (the paper: the rest of 50 epochs).
        uniform_prob: The reference's stage mixing: at every stage of the curriculum
            methods (Coconut, pause), each record is built, with this probability, at a
            stage drawn uniformly from 0..its number of steps instead of the current one
            (`mixed_stages`). 0 in the reference's main runs; its analysis runs mix, so a
            model keeps the formats of the earlier stages that the BFS probe reads.
    """

    max_latent_stage: int = 6
    c_thought: int = 1
    steps_per_stage: int = 100
    final_steps: int = 100
    uniform_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.max_latent_stage < 0 or self.c_thought < 1:
            raise ValueError("max_latent_stage must be >= 0 and c_thought >= 1")
        if self.steps_per_stage < 1 or self.final_steps < 0:
            raise ValueError("steps_per_stage must be >= 1 and final_steps >= 0")
        if not 0.0 <= self.uniform_prob <= 1.0:
            raise ValueError(f"uniform_prob must be in [0, 1], got {self.uniform_prob}")

    @property
    def n_thoughts(self) -> int:
        """Latent tokens at the final stage (and at inference)."""
        return self.max_latent_stage * self.c_thought

    def schedule(self, method: str) -> list[tuple[int, int]]:
        """(stage, optimizer steps) pairs a method trains through; the same total for all.

        The curriculum methods walk stages 0..K+1; the others spend the same steps at their
        one stage (each pair still resets the optimizer, as the reference does per stage).
        """
        check_method(method)
        K = self.max_latent_stage
        stages = [(k, self.steps_per_stage) for k in range(K + 1)]
        if self.final_steps:
            stages.append((K + 1, self.final_steps))
        if method in ("coconut", "pause"):
            return stages
        fixed = {"cot": 0, "no_cot": 0, "no_curriculum": K + 1}[method]
        return [(fixed, n) for _, n in stages]


def mixed_stages(
    records: Sequence[TokenizedRecord], stage: int, cur: Curriculum, generator: torch.Generator
) -> list[int]:
    """The stage each record is built at during ``stage``, with ``cur.uniform_prob`` mixing.

    Each record keeps ``stage`` unless a draw below ``uniform_prob`` picks a stage uniformly
    from 0..len(its steps) (the reference's ``get_cot_latent_dataset``; a stage past
    ``max_latent_stage`` then drops every step with the latents at the maximum). Two draws
    per record from ``generator`` whatever the outcome, so the result is determined by it.
    """
    if cur.uniform_prob == 0.0:
        return [stage] * len(records)
    coins = torch.rand(len(records), generator=generator).tolist()
    picks = torch.rand(len(records), generator=generator).tolist()
    return [
        int(p * (len(r.steps) + 1)) if c < cur.uniform_prob else stage
        for r, c, p in zip(records, coins, picks)
    ]


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")


def build_tokenizer(records: Sequence[dict[str, Any]]) -> WordTokenizer:
    """A word tokenizer (punctuation split off) over the records' text and the markers."""
    texts = [t for r in records for t in (r["question"], r["answer"], *r["steps"])]
    texts.append("###")
    return WordTokenizer.from_texts(texts, specials=[BOT, EOT, LATENT, PAUSE], split_punct=True)


@dataclass(frozen=True)
class TokenizedRecord:
    """A record's token ids: question, one list per step, and "### answer" + EOS."""

    question: list[int]
    steps: list[list[int]]
    answer: list[int]


def tokenize_record(tok: WordTokenizer, record: dict[str, Any]) -> TokenizedRecord:
    return TokenizedRecord(
        question=tok.encode(record["question"]),
        steps=[tok.encode(s) for s in record["steps"]],
        answer=tok.encode("### " + record["answer"], add_eos=True),
    )


@dataclass(frozen=True)
class Example:
    """One training sequence: ids, labels (-100 where not learned), and ``align``, the
    number of tokens before the first latent (or before the reasoning) to line rows up."""

    ids: list[int]
    labels: list[int]
    align: int


def stage_example(
    rec: TokenizedRecord, method: str, stage: int, cur: Curriculum, tok: WordTokenizer
) -> Example:
    """The sequence of ``rec`` for ``method`` at curriculum ``stage``."""
    check_method(method)
    K = cur.max_latent_stage
    if method == "cot":
        prefix, rest = rec.question, [t for s in rec.steps for t in s]
    elif method == "no_cot":
        prefix, rest = rec.question, []
    else:
        n_latent = min(stage, K) * cur.c_thought  # pad_latent_to_max
        skip = stage if stage <= K else len(rec.steps)
        thought = tok.token_to_id(LATENT if method != "pause" else PAUSE)
        prefix = [*rec.question, tok.token_to_id(BOT), *[thought] * n_latent, tok.token_to_id(EOT)]
        rest = [t for s in rec.steps[skip:] for t in s]
    ids = prefix + rest + rec.answer
    labels = [-100] * len(prefix) + rest + rec.answer
    align = len(rec.question) + (0 if method in ("cot", "no_cot") else 1)
    return Example(ids, labels, align)


def inference_prompt(
    rec: TokenizedRecord, method: str, cur: Curriculum, tok: WordTokenizer
) -> list[int]:
    """The prompt the trained model continues: the question, and for the latent methods
    <bot>, the final stage's fixed number of thoughts, <eot>."""
    check_method(method)
    if method in ("cot", "no_cot"):
        return list(rec.question)
    thought = tok.token_to_id(LATENT if method != "pause" else PAUSE)
    bot, eot = tok.token_to_id(BOT), tok.token_to_id(EOT)
    return [*rec.question, bot, *[thought] * cur.n_thoughts, eot]


def collate(examples: Sequence[Example], pad_id: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """A batch for `minirepro.core.train.lm_loss`: inputs, next-token targets, documents.

    Rows are left-padded so their latents share columns, then right-padded.

    Returns:
        x (B, S-1) ids, y (B, S-1) targets (-100 where not learned), document ids
        (B, S-1): 0 on padding, 1 on tokens.
    """
    ids, docs = left_pad([e.ids for e in examples], [e.align for e in examples], pad_id)
    labels = torch.full_like(ids, -100)
    for i, e in enumerate(examples):
        start = int(docs[i].argmax())  # first real token
        labels[i, start : start + len(e.labels)] = torch.as_tensor(e.labels)
    return ids[:, :-1], labels[:, 1:], docs[:, :-1]
