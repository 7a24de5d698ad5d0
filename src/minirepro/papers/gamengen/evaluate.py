"""How good a learned game engine is: PSNR teacher-forced and over autoregressive rollouts,
against copying the last frame, and whether the actions move the picture the right way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from minirepro.papers.gamengen.dataset import Gameplay
from minirepro.papers.gamengen.world_model import WorldModel, to_model

__all__ = [
    "RolloutResult",
    "action_sensitivity",
    "opposite_actions",
    "psnr",
    "rollout",
    "rollout_starts",
    "teacher_forced",
]


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per frame, in dB, of frames in [-1, 1].

    Args:
        a, b: (..., 3, H, W).

    Returns:
        (...) PSNR with the peak 1 on the [0, 1] scale (as for 8-bit images).
    """
    mse = ((a - b) / 2).square().flatten(-3).mean(-1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def _context(data: Gameplay, targets: np.ndarray, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = targets[:, None] - n + np.arange(n)[None]  # (B, N)
    return to_model(data.frames[idx]), torch.as_tensor(data.actions[idx], dtype=torch.long)


def teacher_forced(
    model: WorldModel,
    data: Gameplay,
    targets: np.ndarray,
    *,
    steps: int = 4,
    context_sigma: float = 0.0,
    seed: int = 0,
    batch: int = 64,
) -> tuple[float, float]:
    """Next-frame PSNR from real context frames, and the PSNR of copying the last one.

    Args:
        model: The world model.
        data: Held-out gameplay.
        targets: (M,) target indices with a full context (`data.windows`).
        steps: DDIM steps.
        context_sigma: Inference context noise (see `WorldModel.predict`).
        seed: Seeds the sampling noise.
        batch: Frames per forward pass.

    Returns:
        (mean model PSNR, mean copy-last-frame PSNR) in dB.
    """
    g = torch.Generator().manual_seed(seed)
    ours, copy = [], []
    for i in range(0, len(targets), batch):
        t = targets[i : i + batch]
        ctx, act = _context(data, t, model.cfg.context)
        real = to_model(data.frames[t])
        pred = model.predict(ctx, act, steps=steps, context_sigma=context_sigma, generator=g)
        ours.append(psnr(pred, real))
        copy.append(psnr(ctx[:, -1], real))
    return torch.cat(ours).mean().item(), torch.cat(copy).mean().item()


def rollout_starts(data: Gameplay, context: int, length: int, n: int, seed: int = 0) -> np.ndarray:
    """Up to `n` start indices t whose episode holds frames t - context .. t + length - 1."""
    t = np.arange(context, len(data) - length + 1)
    ok = t[data.episodes[t - context] == data.episodes[t + length - 1]]
    if len(ok) == 0:
        raise ValueError(f"no episode is longer than {context + length} frames")
    _, first = np.unique(data.episodes[ok], return_index=True)  # spread over episodes
    rng = np.random.default_rng(seed)
    pick = ok[first] if len(first) >= n else ok
    return np.sort(rng.choice(pick, size=min(n, len(pick)), replace=False))


@dataclass(frozen=True)
class RolloutResult:
    """Frames and PSNR of autoregressive rollouts.

    Attributes:
        psnr: (B, L) PSNR of each generated frame against the real one.
        frames: (B, L, 3, H, W) the generated frames.
        real: (B, L, 3, H, W) the real frames.
    """

    psnr: torch.Tensor
    frames: torch.Tensor
    real: torch.Tensor


def rollout(
    model: WorldModel,
    data: Gameplay,
    starts: np.ndarray,
    length: int,
    *,
    steps: int = 4,
    context_sigma: float = 0.0,
    seed: int = 0,
) -> RolloutResult:
    """Plays the recorded actions through the model, feeding back its own frames.

    The context starts as the real frames before each start; after that every frame the
    model sees is one it generated.
    """
    n = model.cfg.context
    g = torch.Generator().manual_seed(seed)
    ctx, _ = _context(data, starts, n)
    idx = starts[:, None] + np.arange(length)[None]  # (B, L) real frame indices
    real = to_model(data.frames[idx])
    hist = torch.as_tensor(data.actions[starts[:, None] - n + np.arange(n + length)[None]])
    out = []
    for k in range(length):
        act = hist[:, k : k + n].long()  # actions on the n context frames
        nxt = model.predict(ctx, act, steps=steps, context_sigma=context_sigma, generator=g)
        out.append(nxt)
        ctx = torch.cat([ctx[:, 1:], nxt[:, None]], dim=1)
    frames = torch.stack(out, dim=1)
    return RolloutResult(psnr(frames, real), frames, real)


def opposite_actions(action_names: tuple[str, ...]) -> dict[int, int]:
    """Pairs of actions with opposite effects, by name: LEFT <-> RIGHT, UP <-> DOWN."""
    swaps = [("LEFT", "RIGHT"), ("UP", "DOWN")]
    out = {}
    for i, name in enumerate(action_names):
        for a, b in swaps:
            for x, y in ((a, b), (b, a)):
                if x in name.split("_"):
                    other = "_".join(y if p == x else p for p in name.split("_"))
                    if other in action_names:
                        out[i] = action_names.index(other)
    return out


def action_sensitivity(
    model: WorldModel,
    data: Gameplay,
    targets: np.ndarray,
    *,
    steps: int = 4,
    min_change: float = 0.02,
    seed: int = 0,
    batch: int = 64,
) -> tuple[float, int]:
    """How often the model's frame for the action really taken is closer to the real next
    frame than its frame for the opposite action (same noise, same context).

    Only held-out frames whose action has an opposite (`opposite_actions`) and whose real
    next frame differs from the last context frame (mean |diff| > `min_change` on the
    [-1, 1] scale) count: where nothing moved, there is no right way to move.

    Returns:
        (fraction moved the right way, number of frames judged).
    """
    opp = opposite_actions(tuple(model.cfg.action_names))
    if not opp:
        raise ValueError(f"no opposite actions among {model.cfg.action_names}")
    n = model.cfg.context
    ok = np.isin(data.actions[targets - 1], list(opp))
    targets = targets[ok]
    ctx_all, _ = _context(data, targets, n)
    real_all = to_model(data.frames[targets])
    moved = (real_all - ctx_all[:, -1]).abs().flatten(1).mean(1) > min_change
    targets = targets[moved.numpy()]
    if len(targets) == 0:
        raise ValueError("no held-out frame with a left/right action that changed the picture")
    right = []
    for i in range(0, len(targets), batch):
        t = targets[i : i + batch]
        ctx, act = _context(data, t, n)
        swapped = act.clone()
        swapped[:, -1] = torch.as_tensor([opp[int(a)] for a in act[:, -1]])
        real = to_model(data.frames[t])
        gen = model.predict(
            ctx, act, steps=steps, generator=torch.Generator().manual_seed(seed + i)
        )
        alt = model.predict(
            ctx, swapped, steps=steps, generator=torch.Generator().manual_seed(seed + i)
        )
        right.append(psnr(gen, real) > psnr(alt, real))
    return torch.cat(right).float().mean().item(), len(targets)
