"""Training a method through its stages with the core trainer, one run per stage.

Each stage is one `minirepro.core.train.train` call on that stage's sequences: a fresh
AdamW per call is the reference's ``reset_optimizer: True``, and a constant learning rate
(no warmup, ``min_lr_ratio=1``, the defaults) its schedule-free AdamW. Batches are drawn with the
step's generator, so a run is determined by its seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from minirepro.core.model import ModelConfig, Transformer
from minirepro.core.precision import check_precision
from minirepro.core.tokenizer import WordTokenizer
from minirepro.core.train import TrainConfig, train
from minirepro.papers.coconut.curriculum import (
    LATENT,
    PAUSE,
    Curriculum,
    TokenizedRecord,
    check_method,
    collate,
    mixed_stages,
    stage_example,
)
from minirepro.papers.coconut.latent import Coconut

__all__ = ["TrainSettings", "make_model", "train_method"]


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation of every stage.

    Attributes:
        lr: Constant AdamW learning rate (the reference: 1e-4 for pretrained GPT-2; a
            small model trained from scratch wants more).
        weight_decay: AdamW weight decay ("weight_decay: 0.01").
        batch_size: Sequences per step ("batch_size_training: 32" per GPU).
        grad_clip: Global gradient-norm clip.
        precision: "fp32", "bf16" or "auto" (`minirepro.core.precision`).
        warmup_steps: Linear warmup at the start of every stage (the optimizer is new at
            each); 0, the reference's setting, starts at ``lr``.
        min_lr_ratio: Each stage's learning rate follows a cosine from ``lr`` down to
            ``lr * min_lr_ratio`` (a warm restart at the next stage's new optimizer); 1, the
            reference's setting, keeps it constant.
    """

    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 32
    grad_clip: float | None = 1.0
    precision: str = "fp32"
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not self.lr > 0 or self.batch_size < 1:
            raise ValueError(
                f"lr must be > 0 and batch_size >= 1, got {self.lr}, {self.batch_size}"
            )


def make_model(
    method: str,
    tok: WordTokenizer,
    cfg: ModelConfig,
    base: torch.nn.Module | None = None,
    seed: int = 0,
) -> Coconut:
    """A Coconut wrapper for ``method`` around ``base`` (default: a new core decoder).

    Pause-as-thought keeps the latent token's own (<pause>) embedding; the others recycle
    hidden states (CoT and No-CoT sequences simply hold no latents).
    """
    check_method(method)
    if base is None:
        torch.manual_seed(seed)  # every method of a seed starts from the same weights
        base = Transformer(cfg)
    pause = method == "pause"
    return Coconut(base, tok.token_to_id(PAUSE if pause else LATENT), recycle=not pause)


def train_method(
    net: Coconut,
    records: Sequence[TokenizedRecord],
    method: str,
    cur: Curriculum,
    tok: WordTokenizer,
    settings: TrainSettings = TrainSettings(),
    seed: int = 0,
    on_stage: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``net`` on ``records`` through the stages of ``method``.

    Args:
        net: The model (trained in place).
        records: Tokenized training records.
        method: One of `METHODS`.
        cur: The curriculum.
        tok: The tokenizer (marker ids).
        settings: Optimisation settings.
        seed: Seeds every stage's run (with the stage's index).
        on_stage: Called with (stage index, stage, last metrics) after each stage.

    Returns:
        The metrics history of every stage, each record tagged with its stage.
    """
    if not records:
        raise ValueError("no training records")
    history: list[dict[str, Any]] = []
    for i, (stage, steps) in enumerate(cur.schedule(method)):
        at = [stage] * len(records)
        if method in ("coconut", "pause"):  # the curriculum methods mix stages
            g = torch.Generator().manual_seed(7919 * (seed + 1) + i)
            at = mixed_stages(records, stage, cur, g)
        examples = [stage_example(r, method, s, cur, tok) for r, s in zip(records, at)]

        def get_batch(step: int, g: torch.Generator, examples=examples):
            pick = torch.randint(len(examples), (settings.batch_size,), generator=g).tolist()
            return collate([examples[j] for j in pick], tok.pad_id)

        tcfg = TrainConfig(
            steps=steps,
            lr=settings.lr,
            weight_decay=settings.weight_decay,
            warmup_steps=min(settings.warmup_steps, steps),
            min_lr_ratio=settings.min_lr_ratio,
            grad_clip=settings.grad_clip,
            batch_size=settings.batch_size,
            log_every=max(1, steps // 4),
            seed=1000 * seed + i,
            precision=settings.precision,
        )
        state = train(net, tcfg, get_batch)  # a fresh AdamW: the optimizer resets per stage
        history += [{**m, "stage": stage, "stage_index": i} for m in state.history]
        if on_stage is not None:
            on_stage(i, stage, state.history[-1])
    net.eval()
    return history
