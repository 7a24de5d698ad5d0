"""Training checkpoints: safetensors weights plus optimizer, step and RNG state.

A checkpoint is a folder ``out_dir/checkpoints/step_<step>/`` written atomically, so a
crashed run resumes from the last complete one and continues exactly as if uninterrupted.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        # As a tensor so that the file loads with torch.load(weights_only=True).
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    cfg: Any = None,
) -> Path:
    """Write ``out_dir/checkpoints/step_<step>/`` atomically and delete other checkpoints.

    The folder holds ``model.safetensors`` (weights; tied tensors are stored once) and
    ``state.pt`` (step, optimizer state, RNG states, config). It is written under a ``.tmp``
    name and renamed, so a crash never leaves a half-written checkpoint behind.

    Returns:
        The checkpoint folder.
    """
    root = Path(out_dir) / "checkpoints"
    final = root / f"step_{step:08d}"
    tmp = root / f"step_{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"), metadata={"step": str(step)})
    state = {
        "step": step,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": _rng_state(),
        "config": asdict(cfg) if is_dataclass(cfg) else cfg,
    }
    torch.save(state, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in root.iterdir():
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``out_dir``, or None."""
    root = Path(out_dir) / "checkpoints"
    done = sorted(root.glob("step_*[0-9]")) if root.is_dir() else []
    return done[-1] if done else None


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = False,
) -> int:
    """Load a checkpoint folder written by `save_checkpoint` into ``model`` (and ``optimizer``).

    Returns:
        The step the checkpoint was taken at.
    """
    path = Path(path)
    device = next(iter(model.parameters())).device
    load_model(model, path / "model.safetensors", device=str(device))
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if restore_rng:
        _set_rng_state(state["rng"])
    return int(state["step"])
