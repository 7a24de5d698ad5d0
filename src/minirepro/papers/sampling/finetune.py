"""Training the generators and finetuning on sampled data, on the core decoder and loop.

Documents, tokenizer and packing are the retry paper's (`minirepro.papers.retry`:
``<bos> problem <sep> solution <eos>``, loss on the solution, rows packed with whole
documents and document ids); the loop is `minirepro.core.train.train`. `pretrain` trains a
fresh decoder on the generator's error-free solutions; `finetune` continues a model on
(problem, sampled solution) pairs, e.g. the answer-filtered samples of another model.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from minirepro.core.model import ModelConfig, Transformer
from minirepro.core.seed import seed_everything
from minirepro.core.tokenizer import WordTokenizer
from minirepro.core.train import TrainConfig, train
from minirepro.papers.retry import Variant, document, pack_rows, prompt_ids
from minirepro.tasks.igsm import Problem

__all__ = ["ModelSpec", "TrainSpec", "build_model", "finetune", "pretrain", "solution_document"]

IGNORE = -100


@dataclass(frozen=True)
class ModelSpec:
    """A core decoder's size.

    Attributes:
        name: Label ("WC", "SE", "student").
        d_model, n_layer, n_head: The decoder.
    """

    name: str
    d_model: int
    n_layer: int
    n_head: int

    def __post_init__(self) -> None:
        if min(self.d_model, self.n_layer, self.n_head) < 1 or self.d_model % self.n_head:
            raise ValueError(f"{self.name}: need positive sizes and n_head | d_model, got {self}")


@dataclass(frozen=True)
class TrainSpec:
    """One training run on packed rows.

    Attributes:
        steps, batch_size, lr, warmup_steps: The optimisation (AdamW, warmup + cosine).
        seq_len: Row length (rows of whole documents, left-padded).
        seed: Seeds the model's initialisation (pretraining), the data order and the loop.
    """

    steps: int
    batch_size: int = 2
    lr: float = 1e-2
    warmup_steps: int = 30
    seq_len: int = 384
    seed: int = 0


def build_model(spec: ModelSpec, vocab_size: int, max_seq_len: int, seed: int) -> Transformer:
    """A freshly initialised core decoder of ``spec``'s size."""
    seed_everything(seed)
    return Transformer(
        ModelConfig(
            vocab_size=vocab_size,
            n_layer=spec.n_layer,
            n_head=spec.n_head,
            d_model=spec.d_model,
            max_seq_len=max_seq_len,
        )
    )


def solution_document(
    tok: WordTokenizer, problem: Problem, solution: str
) -> tuple[list[int], list[int]]:
    """``<bos> problem <sep> solution <eos>`` with the loss on the solution and ``<eos>``
    (labels -100 elsewhere), for any written solution (a sampled one included).

    Raises:
        ValueError: The solution has a word outside the tokenizer's vocabulary.
    """
    prompt = prompt_ids(tok, problem)
    ids = prompt + tok.encode(solution) + [tok.eos_id]
    return ids, [IGNORE] * len(prompt) + ids[len(prompt) :]


def _fit(model: Transformer, docs: Iterator, spec: TrainSpec, pad_id: int) -> float:
    x, y, d, _ = pack_rows(docs, spec.steps * spec.batch_size, spec.seq_len, pad_id)
    tcfg = TrainConfig(
        steps=spec.steps, lr=spec.lr, batch_size=spec.batch_size, warmup_steps=spec.warmup_steps,
        weight_decay=0.1, seed=spec.seed, log_every=max(1, spec.steps // 10),
    )  # fmt: skip
    b = spec.batch_size
    state = train(
        model,
        tcfg,
        lambda i, g: (x[i * b : (i + 1) * b], y[i * b : (i + 1) * b], d[i * b : (i + 1) * b]),
    )
    return state.history[-1]["loss"]


def pretrain(
    spec: ModelSpec,
    tok: WordTokenizer,
    problems: Iterable[Problem],
    train_spec: TrainSpec,
    max_seq_len: int,
) -> tuple[Transformer, float]:
    """Train a fresh decoder on the error-free solutions of ``problems`` (consumed in order
    until ``steps × batch_size`` rows are full). Returns the model and its final loss."""
    model = build_model(spec, tok.vocab_size, max(max_seq_len, train_spec.seq_len), train_spec.seed)
    rng = random.Random(train_spec.seed)
    docs = (document(tok, p, Variant("error-free"), rng) for p in problems)
    return model, _fit(model, docs, train_spec, tok.pad_id)


def finetune(
    model: Transformer,
    tok: WordTokenizer,
    pairs: Sequence[tuple[Problem, str]],
    train_spec: TrainSpec,
) -> tuple[Transformer, float]:
    """A copy of ``model`` trained on (problem, solution) pairs for ``steps`` steps (the
    pairs reshuffled each epoch, so every dataset gets the same number of tokens). Pairs
    whose solution does not encode are dropped.

    Returns:
        The finetuned copy and its final loss.

    Raises:
        ValueError: No pair encodes.
    """
    docs = []
    for problem, text in pairs:
        try:
            doc = solution_document(tok, problem, text)
        except ValueError:
            continue  # a sampled word the tokenizer lacks (e.g. a stray special token)
        if len(doc[0]) <= train_spec.seq_len + 1:
            docs.append(doc)
    if not docs:
        raise ValueError(f"none of the {len(pairs)} pairs encodes into a document that fits")
    rng = random.Random(train_spec.seed)

    def epochs() -> Iterator[tuple[list[int], list[int]]]:
        while True:
            yield from rng.sample(docs, len(docs))

    seed_everything(train_spec.seed)
    tuned = copy.deepcopy(model)
    return tuned, _fit(tuned, epochs(), train_spec, tok.pad_id)
