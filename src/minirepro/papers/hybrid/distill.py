"""Distilling a transformer into a hybrid on text the teacher generated.

- Teacher data: the teacher samples continuations of prompts (`teacher_text`); the teacher's
  residual stream at the first layer it touches, its attention outputs and its final hidden
  states are recorded once (`record_teacher`), so no teacher forward runs while training.
- Stage 1 (layerwise, pseudo-labels): each new Mamba layer regresses the output of the
  attention layer it replaces, on the teacher's own inputs to that layer (MSE).
- Stage 2 (end to end): kl_weight · KL(teacher ‖ student) + ce_weight · CE on the teacher's
  tokens, through the student from the lowest replaced layer up.

Only the Mamba layers train; attention, MLPs, norms and embeddings stay the teacher's (the
paper's stage 2 also trains the MLPs; see NOTES.md). Both stages run in the core trainer.
Layers below the lowest replaced one are identical in teacher and student, so the student
starts from the recorded residual stream there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minirepro.core.generate import generate_many
from minirepro.core.model import MixerInput, Transformer, rope_cos_sin
from minirepro.core.train import TrainConfig, train

__all__ = [
    "DistillConfig",
    "TeacherRecord",
    "distill",
    "evaluate_student",
    "mamba_layers",
    "record_teacher",
    "teacher_text",
]


@dataclass
class DistillConfig:
    """Budget and loss of the two stages.

    kl_weight, ce_weight: the stage-2 loss kl_weight · KL(teacher ‖ student) + ce_weight · CE
    ("we use kl_weight · KL + ce_weight · CE", the paper's end-to-end stage).
    """

    stage1_steps: int = 40
    stage2_steps: int = 40
    batch_size: int = 8
    lr1: float = 1e-3
    lr2: float = 3e-4
    kl_weight: float = 1.0
    ce_weight: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.stage1_steps < 0 or self.stage2_steps < 0 or self.batch_size < 1:
            raise ValueError("stage steps must be >= 0 and batch_size >= 1")
        if self.kl_weight < 0 or self.ce_weight < 0 or self.kl_weight + self.ce_weight == 0:
            raise ValueError("kl_weight and ce_weight must be >= 0, not both 0")


def teacher_text(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 0.8,
    seed: int = 0,
) -> Tensor:
    """Prompts continued by the teacher, as (N, S) ids.

    Sampling runs to exactly max_new_tokens (no stop tokens); prompts of different lengths
    are batched by length, and every row is cut to the shortest total length S.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("teacher_text needs at least one prompt, none of them empty")
    new = generate_many(model, [list(p) for p in prompts], max_new_tokens=max_new_tokens,
                        temperature=temperature, seed=seed)  # fmt: skip
    rows = [list(p) + n for p, n in zip(prompts, new)]
    S = min(len(r) for r in rows)
    return torch.tensor([r[:S] for r in rows])


def mamba_layers(model: Transformer) -> list[int]:
    return [i for i in range(model.cfg.n_layer) if model.cfg.mixer_of(i) != "attention"]


def _rope(model: Transformer, S: int, device) -> tuple[Tensor, Tensor]:
    return rope_cos_sin(torch.arange(S, device=device), model.cfg.head_dim, model.cfg.rope_theta)


@dataclass
class TeacherRecord:
    """What training needs from the teacher, for ids (N, S).

    Attributes:
        ids: (N, S) token ids.
        start: the first layer the students replace.
        residual: {layer: (N, S, d_model)} the teacher's residual stream entering each layer
            >= start.
        attention: {layer: (N, S, d_model)} each of those layers' attention outputs.
        final: (N, S, d_model) the teacher's final normalised hidden states.
    """

    ids: Tensor
    start: int
    residual: dict[int, Tensor]
    attention: dict[int, Tensor]
    final: Tensor


@torch.no_grad()
def record_teacher(
    teacher: Transformer, ids: Tensor, start: int, batch_size: int = 8
) -> TeacherRecord:
    """Run the teacher once over ids (N, S) and keep what the stages need from `start` up."""
    if not 0 <= start < teacher.cfg.n_layer:
        raise ValueError(f"start layer {start} out of range")
    res: dict[int, list[Tensor]] = {i: [] for i in range(start, teacher.cfg.n_layer)}
    att: dict[int, list[Tensor]] = {i: [] for i in res}
    finals = []
    cos, sin = _rope(teacher, ids.shape[1], ids.device)
    for rows in ids.split(batch_size):
        x = teacher.embed(rows)  # (b, S, d_model)
        for i, block in enumerate(teacher.layers):
            inp = MixerInput(cos, sin, 0)
            if i >= start:
                res[i].append(x)
                a = block.mixer(block.norm1(x), inp)
                att[i].append(a)
                x = x + a
                x = x + block.mlp(block.norm2(x))
            else:
                x = block(x, inp)
        finals.append(teacher.norm(x))
    cat = lambda d: {i: torch.cat(v) for i, v in d.items()}  # noqa: E731
    return TeacherRecord(ids, start, cat(res), cat(att), torch.cat(finals))


class _Layerwise(nn.Module):
    """Stage 1: each Mamba layer against the attention output it replaces (summed MSE)."""

    def __init__(self, student: Transformer, layers: list[int]) -> None:
        super().__init__()
        self.student, self.layers = student, layers

    def forward(self, residual: Tensor, attention: Tensor) -> Tensor:
        """residual, attention: (B, n_layers, S, d_model) -> the loss."""
        cos, sin = _rope(self.student, residual.shape[2], residual.device)
        loss = residual.new_zeros(())
        for j, i in enumerate(self.layers):
            block = self.student.layers[i]
            y = block.mixer(block.norm1(residual[:, j]), MixerInput(cos, sin, 0))
            loss = loss + F.mse_loss(y, attention[:, j])
        return loss


class _Upper(nn.Module):
    """The student from layer `start` up: residual (B, S, d_model) -> logits (B, S, V)."""

    def __init__(self, student: Transformer, start: int) -> None:
        super().__init__()
        self.student, self.start = student, start

    def forward(self, residual: Tensor) -> Tensor:
        cos, sin = _rope(self.student, residual.shape[1], residual.device)
        x = residual
        for block in self.student.layers[self.start :]:
            x = block(x, MixerInput(cos, sin, 0))
        return self.student.lm_head(self.student.norm(x))


def _kl_ce(logits: Tensor, teacher_logits: Tensor, targets: Tensor, cfg: DistillConfig) -> Tensor:
    logp = logits.float().log_softmax(-1)  # (B, S, V)
    logq = teacher_logits.float().log_softmax(-1)
    kl = (logq.exp() * (logq - logp)).sum(-1).mean()  # KL(teacher ‖ student) per token
    ce = F.cross_entropy(logp[:, :-1].flatten(0, 1), targets[:, 1:].flatten())
    return cfg.kl_weight * kl + cfg.ce_weight * ce


def _train_only_mamba(student: Transformer) -> list[int]:
    layers = mamba_layers(student)
    for name, p in student.named_parameters():
        p.requires_grad_(any(name.startswith(f"layers.{i}.mixer.") for i in layers))
    return layers


def distill(student: Transformer, rec: TeacherRecord, cfg: DistillConfig) -> dict[str, list[float]]:
    """Stage 1 then stage 2 on the recorded teacher; trains `student`'s Mamba layers in place.

    Returns:
        The loss histories {"stage1": [...], "stage2": [...]}.
    """
    layers = _train_only_mamba(student)
    if not layers or min(layers) < rec.start:
        raise ValueError(
            f"the student's Mamba layers {layers} must lie at or above layer {rec.start}"
        )
    n = rec.ids.shape[0]
    history: dict[str, list[float]] = {"stage1": [], "stage2": []}
    if cfg.stage1_steps:
        res = torch.stack([rec.residual[i] for i in layers], dim=1)  # (N, n_layers, S, d)
        att = torch.stack([rec.attention[i] for i in layers], dim=1)

        def batch1(step: int, g: torch.Generator):
            rows = torch.randint(0, n, (cfg.batch_size,), generator=g)
            return res[rows], att[rows]

        tc = TrainConfig(steps=cfg.stage1_steps, lr=cfg.lr1, weight_decay=0.0,
                         warmup_steps=max(1, cfg.stage1_steps // 10), batch_size=cfg.batch_size,
                         seed=cfg.seed, log_every=1)  # fmt: skip
        st = train(_Layerwise(student, layers), tc, batch1, loss_fn=lambda m, b: m(*b))
        history["stage1"] = [h["loss"] for h in st.history]
    if cfg.stage2_steps:
        start = min(layers)
        upper = _Upper(student, start)
        lm_head = student.lm_head

        def batch2(step: int, g: torch.Generator):
            rows = torch.randint(0, n, (cfg.batch_size,), generator=g)
            return rec.residual[start][rows], rec.final[rows], rec.ids[rows]

        def loss2(model, b):
            residual, final, ids = b
            with torch.no_grad():
                teacher_logits = lm_head(final)
            return _kl_ce(model(residual), teacher_logits, ids, cfg)

        tc = TrainConfig(steps=cfg.stage2_steps, lr=cfg.lr2, weight_decay=0.0,
                         warmup_steps=max(1, cfg.stage2_steps // 10), batch_size=cfg.batch_size,
                         seed=cfg.seed + 1, log_every=1)  # fmt: skip
        st = train(upper, tc, batch2, loss_fn=loss2)
        history["stage2"] = [h["loss"] for h in st.history]
    for p in student.parameters():
        p.requires_grad_(True)
    student.eval()
    return history


@torch.no_grad()
def evaluate_student(
    student: Transformer, rec: TeacherRecord, batch_size: int = 8
) -> dict[str, float]:
    """Mean per-token KL(teacher ‖ student) and top-1 agreement with the teacher on `rec`.

    The student must equal the teacher below `rec.start` (true of every `to_hybrid` student
    whose replaced layers are >= rec.start).
    """
    layers = mamba_layers(student)
    if layers and min(layers) < rec.start:
        raise ValueError(f"the student replaces layer {min(layers)} < recorded start {rec.start}")
    upper = _Upper(student, rec.start).eval()
    kl_sum, agree, count = 0.0, 0, 0
    for residual, final in zip(
        rec.residual[rec.start].split(batch_size), rec.final.split(batch_size)
    ):
        logp = upper(residual).float().log_softmax(-1)
        logq = student.lm_head(final).float().log_softmax(-1)
        kl_sum += float((logq.exp() * (logq - logp)).sum(-1).sum())
        agree += int((logp.argmax(-1) == logq.argmax(-1)).sum())
        count += logp.shape[0] * logp.shape[1]
    return {"kl": kl_sum / count, "agreement": agree / count}
