"""InternVL 2.5's training stages on the core trainer, and the data they consume.

Stage 1 trains the MLP projector alone (lr 2e-4), stage 1.5 the ViT and the projector
(1e-5), stage 2 everything (4e-5), all with weight decay 0.05 (the paper's Table 3). A
stage's parameters are the only ones with ``requires_grad``; the core trainer's AdamW sees
only those. Progressive scaling reuses a ViT trained with a small LLM with a larger one and
skips stage 1.5 (`PROGRESSIVE_STAGES`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from minirepro.core.tokenizer import Tokenizer
from minirepro.core.train import TrainConfig, train
from minirepro.papers.internvl.loss import weighted_lm_loss
from minirepro.papers.internvl.vlm import IMG_END, IMG_START, SEP, VLM, build_prompt

__all__ = [
    "FULL_STAGES", "PROGRESSIVE_STAGES", "STAGES", "WEIGHT_DECAY", "Example", "Stage",
    "GlyphProbe", "collate", "encode_record", "encode_text_record", "pretrain_vit",
    "set_trainable", "train_llm_text",
    "train_stage",
]  # fmt: skip

WEIGHT_DECAY = 0.05  # "weight decay 0.05" for every stage (Table 3)


@dataclass(frozen=True)
class Stage:
    """A training stage: which parts learn and the paper's peak learning rate."""

    name: str
    trains: tuple[str, ...]
    lr: float


STAGES = {
    "1": Stage("1", ("projector",), 2e-4),  # "only the MLP projector is trained" (MLP warmup)
    "1.5": Stage("1.5", ("vit", "projector"), 1e-5),  # ViT incremental learning
    "2": Stage("2", ("vit", "projector", "llm"), 4e-5),  # full-model instruction tuning
}
FULL_STAGES = ("1", "1.5", "2")
PROGRESSIVE_STAGES = ("1", "2")  # a ViT reused from a smaller LLM skips stage 1.5


@dataclass
class Example:
    """One tokenised sample: ids (S,), next-token labels (S,) with -100 off the answer, and
    its tiles (N, C, T, T) (N = 0 for text)."""

    ids: list[int]
    labels: list[int]
    tiles: Tensor
    kind: str = ""


def _example(prompt: list[int], answer: list[int], tiles: Tensor, kind: str) -> Example:
    ids = prompt + answer
    labels = [-100] * (len(prompt) - 1) + answer + [-100]  # position t predicts ids[t + 1]
    return Example(ids, labels, tiles, kind)


def encode_record(tok: Tokenizer, record: dict, tiles: Tensor, tokens_per_tile: int) -> Example:
    """A visual question (``question``, ``answer``) with its image's tiles (N, C, T, T)."""
    prompt = build_prompt(tok, len(tiles) * tokens_per_tile, record["question"])
    return _example(
        prompt, tok.encode(record["answer"], add_eos=True), tiles, record.get("kind", "")
    )


def encode_text_record(tok: Tokenizer, record: dict) -> Example:
    """The same question with the image's content as text (``digits`` between the image
    markers): what the LLM is pretrained on before it sees images."""
    words = " ".join(map(str, record["digits"]))
    prompt = (
        [tok.bos_id, tok.token_to_id(IMG_START)] + tok.encode(words) + [tok.token_to_id(IMG_END)]
        + tok.encode(record["question"]) + [tok.token_to_id(SEP)]
    )  # fmt: skip
    return _example(
        prompt, tok.encode(record["answer"], add_eos=True), torch.zeros(0), record.get("kind", "")
    )


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, Tensor]:
    """Right-padded ``input_ids`` and ``labels`` (B, S) and the tiles of all rows in order."""
    S = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), S), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), S), -100, dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
    tiles = [e.tiles for e in examples if e.tiles.numel()]
    return {"input_ids": ids, "labels": labels, "tiles": torch.cat(tiles) if tiles else None}


def set_trainable(vlm: VLM, stage: Stage) -> None:
    """Only the stage's parts keep ``requires_grad``."""
    for name in ("vit", "projector", "llm"):
        getattr(vlm, name).requires_grad_(name in stage.trains)


def _train_config(
    steps: int, lr: float, batch_size: int, seed: int, eval_every: int = 0
) -> TrainConfig:
    """AdamW with the paper's weight decay, 10% warmup, cosine decay."""
    return TrainConfig(
        steps=steps, lr=lr, weight_decay=WEIGHT_DECAY, warmup_steps=max(1, steps // 10),
        batch_size=batch_size, seed=seed, eval_every=eval_every, log_every=max(1, steps // 10),
    )  # fmt: skip


def _batches(examples: Sequence[Example], batch_size: int, pad_id: int):
    if not examples:
        raise ValueError("no training examples")

    def get_batch(step: int, g: torch.Generator) -> dict[str, Tensor]:
        idx = torch.randint(0, len(examples), (batch_size,), generator=g).tolist()
        return collate([examples[i] for i in idx], pad_id)

    return get_batch


def train_stage(
    vlm: VLM,
    stage: Stage | str,
    examples: Sequence[Example],
    steps: int,
    *,
    pad_id: int,
    batch_size: int = 16,
    lr_scale: float = 1.0,
    weighting: str = "square",
    seed: int = 0,
    eval_fn: Callable[[nn.Module, int], dict[str, float]] | None = None,
    eval_every: int = 0,
) -> list[dict[str, float]]:
    """Train one stage with the core trainer; returns its metrics history.

    Args:
        vlm: the model, trained in place.
        stage: a `Stage` or its name in `STAGES`.
        examples: tokenised samples with tiles.
        steps: optimizer steps.
        pad_id: the tokenizer's padding id.
        batch_size: samples per step.
        lr_scale: multiplies the paper's learning rate (tiny models from scratch need more).
        weighting: "token", "sample" or "square" (`weighted_lm_loss`).
        seed: batches and initial RNG state.
        eval_fn, eval_every: the core trainer's evaluation hook.
    """
    stage = STAGES[stage] if isinstance(stage, str) else stage
    set_trainable(vlm, stage)
    cfg = _train_config(steps, stage.lr * lr_scale, batch_size, seed, eval_every)

    def loss_fn(model: nn.Module, b: dict[str, Tensor]) -> Tensor:
        return weighted_lm_loss(model(b["input_ids"], b["tiles"]), b["labels"], weighting)

    state = train(vlm, cfg, _batches(examples, batch_size, pad_id), loss_fn, eval_fn)
    vlm.requires_grad_(True)
    return state.history


def train_llm_text(
    llm: nn.Module, examples: Sequence[Example], steps: int, *, pad_id: int, lr: float,
    batch_size: int = 32, seed: int = 0,
) -> list[dict[str, float]]:  # fmt: skip
    """Pretrain the decoder on the text form of the task (`encode_text_record`): the
    stand-in for the paper's pretrained LLM."""
    cfg = _train_config(steps, lr, batch_size, seed)

    def loss_fn(model: nn.Module, b: dict[str, Tensor]) -> Tensor:
        return weighted_lm_loss(model(b["input_ids"]), b["labels"], "token")

    return train(llm, cfg, _batches(examples, batch_size, pad_id), loss_fn).history


class GlyphProbe(nn.Module):
    """A ViT with a linear classifier on its max-pooled patch tokens (pretraining head)."""

    def __init__(self, vit: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.vit = vit
        self.head = nn.Linear(vit.cfg.d_model, n_classes)

    def forward(self, tiles: Tensor) -> Tensor:
        """tiles (N, C, S, S) -> class logits (N, n_classes)."""
        return self.head(self.vit(tiles)[:, 1:].max(1).values)


def pretrain_vit(
    vit: nn.Module, tiles: Tensor, labels: Tensor, steps: int, *, lr: float,
    batch_size: int = 32, seed: int = 0,
) -> list[dict[str, float]]:  # fmt: skip
    """Pretrain the ViT to classify the glyph in each tile: the stand-in for InternViT's
    own pretraining (the paper starts from a pretrained ViT and a pretrained LLM).

    Args:
        vit: the ViT, trained in place.
        tiles: (N, C, S, S) tiles holding one glyph each.
        labels: (N,) class ids.
        steps, lr, batch_size, seed: optimisation.
    """
    if len(tiles) != len(labels) or not len(tiles):
        raise ValueError(f"need as many labels as tiles (> 0), got {len(tiles)} and {len(labels)}")
    probe = GlyphProbe(vit, int(labels.max()) + 1)
    cfg = _train_config(steps, lr, batch_size, seed)

    def get_batch(step: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, len(tiles), (batch_size,), generator=g)
        return tiles[idx], labels[idx]

    def loss_fn(model: nn.Module, b: tuple[Tensor, Tensor]) -> Tensor:
        return torch.nn.functional.cross_entropy(model(b[0]), b[1])

    return train(probe, cfg, get_batch, loss_fn).history
