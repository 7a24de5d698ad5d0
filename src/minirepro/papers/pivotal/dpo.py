"""Direct Preference Optimization (sigmoid loss) for single-token and whole-response pairs.

``loss = -log σ(β · ((log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))))``,
each log-probability summed over the completion's tokens (one token for a pivotal pair).
The reference log-probs are either precomputed once (``ref_logps``) or computed live from a
frozen reference model, as TRL's ``precompute_ref_log_probs`` switch does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minirepro.core.train import TrainConfig, train
from minirepro.papers.pivotal.pairs import PreferencePair

__all__ = ["DPOConfig", "completion_logps", "dpo_loss", "pad_pairs", "reference_logps", "train_dpo"]


def dpo_loss(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> tuple[Tensor, Tensor]:
    """The sigmoid DPO loss.

    Args:
        chosen_logps, rejected_logps: Policy log-probs of the completions, (B,).
        ref_chosen_logps, ref_rejected_logps: The reference model's, (B,).
        beta: Strength of the implicit KL penalty (β > 0).

    Returns:
        ``(loss, margins)``: the mean loss (scalar) and the implicit reward margins
        ``β · (chosen log-ratio − rejected log-ratio)``, (B,).
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    shapes = {
        tuple(t.shape) for t in (chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    }
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"log-probs must be four (B,) tensors of one shape, got {sorted(shapes)}")
    margins = beta * ((chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps))
    return -F.logsigmoid(margins).mean(), margins


def pad_pairs(
    pairs: Sequence[PreferencePair], pad_id: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pairs as right-padded rows ``prompt + completion``.

    Returns:
        ``(chosen_ids, chosen_mask, rejected_ids, rejected_mask)``, each (P, S): token ids,
        and 1 where the token belongs to the completion (the positions whose log-prob counts).
    """
    if not pairs:
        raise ValueError("no preference pairs")
    rows = [[(p.prompt, p.chosen) for p in pairs], [(p.prompt, p.rejected) for p in pairs]]
    S = max(len(a) + len(b) for side in rows for a, b in side)
    out = []
    for side in rows:
        ids = torch.full((len(pairs), S), pad_id, dtype=torch.long)
        mask = torch.zeros((len(pairs), S), dtype=torch.long)
        for i, (a, b) in enumerate(side):
            ids[i, : len(a) + len(b)] = torch.tensor([*a, *b])
            mask[i, len(a) : len(a) + len(b)] = 1
        out += [ids, mask]
    return tuple(out)  # type: ignore[return-value]


def completion_logps(model: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
    """Summed log-probs of the masked tokens of each row.

    Args:
        model: A decoder, ``model(ids) -> logits (B, S, V)``; rows start at position 0.
        ids: (B, S) token ids, right-padded.
        mask: (B, S), 1 on the tokens to score (never position 0).

    Returns:
        (B,) float32: ``sum_t mask[t] · log p(ids[t] | ids[:t])``.
    """
    if ids.shape != mask.shape or ids.ndim != 2:
        raise ValueError(
            f"ids and mask must be (B, S) of one shape, got {tuple(ids.shape)}, {tuple(mask.shape)}"
        )
    if bool(mask[:, 0].any()):
        raise ValueError("the first token of a row has no context to be scored from")
    logits = model(ids[:, :-1]).float()  # (B, S-1, V)
    logp = torch.gather(logits.log_softmax(-1), -1, ids[:, 1:, None])[..., 0]  # (B, S-1)
    return (logp * mask[:, 1:]).sum(-1)


@torch.no_grad()
def reference_logps(
    model: nn.Module, pairs: Sequence[PreferencePair], pad_id: int, batch_size: int = 64
) -> tuple[Tensor, Tensor]:
    """The (frozen) reference model's log-probs of every pair's chosen and rejected side,
    ((P,), (P,)), computed once ("precomputed reference log-probs")."""
    was = model.training
    model.eval()
    cid, cm, rid, rm = pad_pairs(pairs, pad_id)
    c = torch.cat(
        [
            completion_logps(model, cid[i : i + batch_size], cm[i : i + batch_size])
            for i in range(0, len(pairs), batch_size)
        ]
    )
    r = torch.cat(
        [
            completion_logps(model, rid[i : i + batch_size], rm[i : i + batch_size])
            for i in range(0, len(pairs), batch_size)
        ]
    )
    model.train(was)
    return c, r


@dataclass(frozen=True)
class DPOConfig:
    """DPO training.

    Attributes:
        beta: KL strength (TRL's default 0.1).
        steps: Optimizer steps; pairs are visited in a fixed shuffled order, epoch after epoch.
        batch_size: Pairs per step.
        lr: AdamW peak learning rate (constant after warmup: ``min_lr_ratio`` 1).
        warmup_steps: Linear warmup.
        seed: Seeds the order of pairs.
        precompute_ref: Compute the reference log-probs once before training (True) or
            with a live forward of the frozen reference in every step (False).
    """

    beta: float = 0.1
    steps: int = 100
    batch_size: int = 8
    lr: float = 1e-4
    warmup_steps: int = 10
    seed: int = 0
    precompute_ref: bool = True

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")


def train_dpo(
    model: nn.Module,
    reference: nn.Module,
    pairs: Sequence[PreferencePair],
    cfg: DPOConfig,
    pad_id: int,
) -> list[float]:
    """Train ``model`` in place with DPO on ``pairs`` against the frozen ``reference``
    (usually a copy of the model before DPO).

    Returns:
        The loss logged through training (the core trainer's history).
    """
    cid, cm, rid, rm = pad_pairs(pairs, pad_id)
    reference.eval()  # used under no_grad only: its parameters are left as they are
    if cfg.precompute_ref:
        ref_c, ref_r = reference_logps(reference, pairs, pad_id)
    else:
        ref_c = ref_r = torch.full((len(pairs),), float("nan"))  # computed per batch
    n = len(pairs)
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.cat(
        [torch.randperm(n, generator=gen) for _ in range(cfg.steps * cfg.batch_size // n + 1)]
    )

    def get_batch(i: int, g: torch.Generator):
        idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        return cid[idx], cm[idx], rid[idx], rm[idx], ref_c[idx], ref_r[idx]

    def loss_fn(m: nn.Module, batch) -> Tensor:
        c_ids, c_mask, r_ids, r_mask, rc, rr = batch
        both = completion_logps(m, torch.cat([c_ids, r_ids]), torch.cat([c_mask, r_mask]))
        c, r = both.chunk(2)
        if not cfg.precompute_ref:
            with torch.no_grad():
                rc = completion_logps(reference, c_ids, c_mask)
                rr = completion_logps(reference, r_ids, r_mask)
        return dpo_loss(c, r, rc, rr, cfg.beta)[0]

    tcfg = TrainConfig(
        steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, warmup_steps=cfg.warmup_steps,
        min_lr_ratio=1.0, weight_decay=0.0, seed=cfg.seed, log_every=max(1, cfg.steps // 10),
    )  # fmt: skip
    model.train()
    state = train(model, tcfg, get_batch, loss_fn=loss_fn)
    model.eval()
    return [h["loss"] for h in state.history]
