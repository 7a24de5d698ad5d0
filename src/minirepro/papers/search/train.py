"""Training on a stream of fresh examples, with the core trainer.

Every step draws a new batch from `minirepro.tasks.dag_search.generate_batch` (seeded by the
trainer's per-step generator, so runs are reproducible and resumable); no example is seen
twice. The loss is cross-entropy of the last position's logits against one correct next
vertex drawn from the answer set, as in the reference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minirepro.core.train import TrainConfig, train
from minirepro.papers.search.model import make_search_model
from minirepro.tasks.dag_search import DISTRIBUTIONS, SearchVocab, generate_batch

__all__ = ["SearchRun", "SearchTrainConfig", "next_vertex_loss", "train_search"]


@dataclass
class SearchTrainConfig:
    """A streaming training run.

    Attributes:
        max_input_size: Tokens per input (graph size: n_ids = (max_input_size - 5) // 3).
        distribution: "balanced" or "naive".
        max_lookahead: Balanced only: largest lookahead trained on (None: the largest the
            input size allows).
        n_layer, d_model, n_head, embedding: The model (`make_search_model`).
        steps, batch_size, lr, warmup_steps, weight_decay: Optimisation.
        seed: Model initialisation and data stream.
    """

    max_input_size: int = 32
    distribution: str = "balanced"
    max_lookahead: int | None = None
    n_layer: int = 4
    d_model: int = 64
    n_head: int = 1
    embedding: str = "onehot"
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        vocab = SearchVocab(self.max_input_size)
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"unknown distribution {self.distribution!r}; choose one of {DISTRIBUTIONS}"
            )
        if self.max_lookahead is not None and not 0 <= self.max_lookahead <= vocab.max_lookahead:
            raise ValueError(
                f"max_lookahead must be in 0..{vocab.max_lookahead} for max_input_size="
                f"{self.max_input_size}, got {self.max_lookahead}"
            )


@dataclass
class SearchRun:
    """A trained model and how fast it trained.

    Attributes:
        model: The trained decoder.
        history: The trainer's metrics records.
        gen_examples_per_s: Examples the generator produced per second of generation.
        train_steps_per_s: Optimizer steps per second, generation time excluded.
        seconds: Wall time of the whole run.
    """

    model: nn.Module
    history: list[dict]
    gen_examples_per_s: float
    train_steps_per_s: float
    seconds: float


def next_vertex_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Cross-entropy of the last position's logits against the labelled next vertex."""
    x, y = batch
    logits = model(x)[:, -1]  # (B, vocab)
    return F.cross_entropy(logits.float(), y)


def train_search(
    cfg: SearchTrainConfig,
    out_dir: str | Path | None = None,
    on_step=None,
    eval_fn=None,
    eval_every: int = 0,
) -> SearchRun:
    """Trains a fresh model on the stream of `cfg.distribution` examples.

    Args:
        cfg: The run.
        out_dir: Where the trainer writes metrics and checkpoints (None: nowhere).
        on_step: ``on_step(step, metrics)`` after every step (progress bars).
        eval_fn, eval_every: ``eval_fn(model, step) -> metrics`` every ``eval_every`` steps
            and at the end (see `minirepro.core.train.train`).
    """
    torch.manual_seed(cfg.seed)
    model = make_search_model(
        cfg.max_input_size, cfg.n_layer, cfg.d_model, cfg.n_head, cfg.embedding
    )
    gen_s = [0.0]

    def get_batch(step: int, g: torch.Generator):
        t0 = time.perf_counter()
        b = generate_batch(
            cfg.batch_size,
            cfg.max_input_size,
            cfg.distribution,
            max_lookahead=cfg.max_lookahead,
            rng=g,
        )
        gen_s[0] += time.perf_counter() - t0
        return b.torch()

    tcfg = TrainConfig(
        steps=cfg.steps,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        log_every=max(1, cfg.steps // 20),
        eval_every=eval_every,
        seed=cfg.seed,
    )
    t0 = time.perf_counter()
    state = train(model, tcfg, get_batch, loss_fn=next_vertex_loss, eval_fn=eval_fn,
                  out_dir=out_dir, resume=False, on_step=on_step)  # fmt: skip
    seconds = time.perf_counter() - t0
    return SearchRun(
        model=state.model.eval(),
        history=state.history,
        gen_examples_per_s=cfg.steps * cfg.batch_size / max(gen_s[0], 1e-9),
        train_steps_per_s=cfg.steps / max(seconds - gen_s[0], 1e-9),
        seconds=seconds,
    )
