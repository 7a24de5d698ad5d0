"""Training with the core trainer: the generator (SFT on correct solutions), generative
verifiers with the unified loss, and the discriminative baseline.

Unified loss (the paper's eq. 3):

    L = L_SFT(D_verify) + lambda * L_SFT(D_correct)

with D_verify the direct or CoT verification examples and D_correct correct solutions;
each step draws ``batch_size`` examples from each set, and lambda = 0 skips the second
term. The discriminative RM is the same backbone with a linear head on the hidden state at
I (`minirepro.papers.processbench.StepScorer`), trained by binary cross-entropy there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minirepro.core.model import ModelConfig, Transformer
from minirepro.core.train import TrainConfig, train
from minirepro.papers.genrm.formats import IGNORE, Example
from minirepro.papers.processbench import StepScorer

__all__ = [
    "LMConfig",
    "pad_examples",
    "train_discriminative",
    "train_generator",
    "train_genrm",
    "unified_loss",
]


@dataclass
class LMConfig:
    """A tiny decoder's shape and its training.

    Attributes:
        d_model, n_layer, n_head, max_seq_len: The core decoder.
        steps, batch_size, lr, warmup_steps, weight_decay: Core trainer settings.
        precision: "fp32", "bf16" or "auto".
    """

    d_model: int = 64
    n_layer: int = 2
    n_head: int = 4
    max_seq_len: int = 256
    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.1
    precision: str = "fp32"

    def model(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(
            vocab_size=vocab_size, n_layer=self.n_layer, n_head=self.n_head,
            d_model=self.d_model, max_seq_len=self.max_seq_len,
        )  # fmt: skip

    def trainer(self, seed: int) -> TrainConfig:
        return TrainConfig(
            steps=self.steps, lr=self.lr, batch_size=self.batch_size,
            warmup_steps=min(self.warmup_steps, self.steps), weight_decay=self.weight_decay,
            seed=seed, log_every=max(1, self.steps // 5), precision=self.precision,
        )  # fmt: skip


def pad_examples(examples: Sequence[Example], pad_id: int) -> tuple[Tensor, Tensor]:
    """Inputs (N, S) and targets (N, S), right-padded (targets IGNORE on padding)."""
    if not examples:
        raise ValueError("no training examples")
    width = max(len(e.ids) for e in examples) - 1
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        x[i, : len(e.ids) - 1] = torch.tensor(e.ids[:-1])
        y[i, : len(e.targets)] = torch.tensor(e.targets)
    return x, y


def _sampler(x: Tensor, y: Tensor, batch_size: int, pad_id: int):
    def draw(g: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        xb, yb = x[idx], y[idx]
        width = int((xb != pad_id).sum(1).max())  # trim the common right padding
        return xb[:, :width], yb[:, :width]

    return draw


def _ce(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    logits = model(x).float()  # (B, S, V)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)


def unified_loss(lam: float):
    """The loss function ``L_SFT(verify) + lam * L_SFT(correct)`` for the core trainer."""
    if lam < 0:
        raise ValueError(f"lambda must be >= 0, got {lam}")

    def loss(model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        xv, yv, *sol = batch
        total = _ce(model, xv, yv)
        if lam > 0:
            total = total + lam * _ce(model, sol[0], sol[1])
        return total

    loss.__name__ = f"unified_loss_lambda_{lam:g}"
    return loss


def train_generator(
    examples: Sequence[Example], vocab_size: int, pad_id: int, cfg: LMConfig, seed: int
) -> tuple[Transformer, list[dict[str, float]]]:
    """A core decoder trained from scratch by SFT on ``examples`` (correct solutions)."""
    torch.manual_seed(seed)
    model = Transformer(cfg.model(vocab_size))
    draw = _sampler(*pad_examples(examples, pad_id), cfg.batch_size, pad_id)
    state = train(model, cfg.trainer(seed), lambda i, g: draw(g), loss_fn=unified_loss(0.0))
    return model.eval(), state.history


def _copy_of(base: Transformer) -> Transformer:
    model = Transformer(base.cfg)
    model.load_state_dict(base.state_dict())
    return model


def train_genrm(
    base: Transformer,
    verify: Sequence[Example],
    correct: Sequence[Example],
    lam: float,
    pad_id: int,
    cfg: LMConfig,
    seed: int,
) -> tuple[Transformer, list[dict[str, float]]]:
    """A generative verifier: a copy of ``base`` fine-tuned with the unified loss.

    Args:
        base: The model to start from (here the generator, standing in for the paper's
            pretrained LM); not modified.
        verify: Direct or CoT verification examples (`WordFormat.direct_example`, ...).
        correct: Correct-solution examples (`WordFormat.solution_example`); unused at lam 0.
        lam: lambda of the unified loss.
        pad_id: Padding id.
        cfg: Training settings (the shape comes from ``base``).
        seed: Batch order.
    """
    if lam > 0 and not correct:
        raise ValueError("lambda > 0 needs correct-solution examples")
    model = _copy_of(base).train()
    draw_v = _sampler(*pad_examples(verify, pad_id), cfg.batch_size, pad_id)
    draw_s = _sampler(*pad_examples(correct, pad_id), cfg.batch_size, pad_id) if lam > 0 else None

    def get_batch(i: int, g: torch.Generator) -> tuple[Tensor, ...]:
        return (*draw_v(g), *draw_s(g)) if draw_s else draw_v(g)

    state = train(model, cfg.trainer(seed), get_batch, loss_fn=unified_loss(lam))
    return model.eval(), state.history


def train_discriminative(
    base: Transformer,
    inputs: Sequence[Sequence[int]],
    labels: Sequence[bool],
    pad_id: int,
    cfg: LMConfig,
    seed: int,
) -> tuple[StepScorer, list[dict[str, float]]]:
    """The discriminative RM: ``base``'s decoder with a linear head, BCE at the last token.

    Args:
        base: Backbone to start from (copied).
        inputs: (N,) direct verification inputs (ending with I); the head reads the hidden
            state of each one's last token.
        labels: (N,) correct or not; balance them (the paper always does).
        pad_id, cfg, seed: As in `train_genrm`.
    """
    if len(inputs) != len(labels) or not inputs:
        raise ValueError(
            f"need aligned non-empty inputs and labels, got {len(inputs)}, {len(labels)}"
        )
    torch.manual_seed(seed)
    model = StepScorer(base.cfg)
    model.decoder.load_state_dict(base.state_dict())
    width = max(len(s) for s in inputs)
    x = torch.full((len(inputs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(inputs):
        x[i, : len(s)] = torch.tensor(list(s))
    last = torch.tensor([len(s) - 1 for s in inputs])
    y = torch.tensor([float(v) for v in labels])

    def get_batch(i: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        idx = torch.randint(0, len(x), (cfg.batch_size,), generator=g)
        w = int(last[idx].max()) + 1
        return x[idx, :w], last[idx], y[idx]

    def loss(m: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        xb, lb, yb = batch
        logits = m(xb).float()[torch.arange(len(xb)), lb]  # (B,) at I
        return F.binary_cross_entropy_with_logits(logits, yb)

    state = train(model, cfg.trainer(seed), get_batch, loss_fn=loss)
    return model.eval(), state.history
