"""The game engine: a conditional diffusion model of the next frame, its training batches,
its loss, training with the shared loop, sampling, and its file format.

    model = WorldModel(WorldModelConfig(frame_size=32, context=4, n_actions=4))
    train_world_model(model, gameplay, TrainConfig(steps=2000, batch_size=32))
    nxt = model.predict(context_frames, actions, steps=4)   # (B, 3, 32, 32) in [-1, 1]
    model.save("doom.safetensors"); WorldModel.load("doom.safetensors")
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minirepro.core.train import TrainConfig, TrainState, train
from minirepro.papers.gamengen.dataset import Gameplay
from minirepro.papers.gamengen.diffusion import NoiseAugmentation, NoiseSchedule, ddim_sample
from minirepro.papers.gamengen.unet import UNet, UNetConfig

__all__ = [
    "WorldModel",
    "WorldModelConfig",
    "make_batch",
    "to_model",
    "to_uint8",
    "train_world_model",
    "v_loss",
]

_FORMAT = "minirepro.gamengen.world_model/1"


@dataclass
class WorldModelConfig(UNetConfig):
    """The U-Net's shape plus the diffusion and conditioning settings.

    Attributes:
        action_names: Names of the actions (for the play page's key map).
        T: Diffusion training timesteps.
        noise_aug: Train with context noise augmentation (False: the ablation).
        max_sigma: Context noise sigma ~ U(0, max_sigma) ("0.7" in the paper).
        context_dropout: Probability of dropping all context frames of an example (for
            classifier-free guidance on the past; "0.1" in the paper).
        residual: Diffuse the change from the last context frame (as the model sees it,
            noise-augmented) instead of the whole frame; the sampled frame is that frame
            plus the sampled change. A reparameterisation, not in the paper: at our training
            budget the whole-frame model stayed below copying the last frame (NOTES.md).
    """

    action_names: tuple[str, ...] = ()
    T: int = 1000
    noise_aug: bool = True
    max_sigma: float = 0.7
    context_dropout: float = 0.1
    residual: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.action_names and len(self.action_names) != self.n_actions:
            raise ValueError(f"{len(self.action_names)} action names for {self.n_actions} actions")
        if not 0.0 <= self.context_dropout < 1.0:
            raise ValueError(f"context_dropout must be in [0, 1), got {self.context_dropout}")


def to_model(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 frames (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(frames))
    if x.dtype != torch.uint8 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (..., H, W, 3), got {x.dtype} {tuple(x.shape)}")
    return x.movedim(-1, -3).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1).numpy()


class WorldModel(nn.Module):
    """U-Net + schedule + augmentation: `forward` predicts v, `predict` samples a frame."""

    def __init__(self, cfg: WorldModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.unet = UNet(cfg)
        self.schedule = NoiseSchedule(cfg.T)
        self.augment = NoiseAugmentation(cfg.max_sigma, cfg.n_buckets)

    def forward(
        self,
        x_t: torch.Tensor,
        context: torch.Tensor,
        t: torch.Tensor,
        bucket: torch.Tensor,
        actions: torch.Tensor,
    ) -> torch.Tensor:
        """v-prediction; shapes as `UNet.forward`."""
        return self.unet(x_t, context, t, bucket, actions)

    @torch.no_grad()
    def predict(
        self,
        context: torch.Tensor,
        actions: torch.Tensor,
        *,
        steps: int = 4,
        context_sigma: float = 0.0,
        guidance: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Samples the next frame with DDIM.

        Args:
            context: (B, N, 3, H, W) past frames in [-1, 1].
            actions: (B, N) int64, the actions on them (the last is the one being taken).
            steps: DDIM steps.
            context_sigma: Noise added to the context at inference, embedded by its bucket
                as in training (0: clean context, bucket 0).
            guidance: Classifier-free guidance weight on the context (1: none; costs a
                second forward pass per step otherwise).
            generator: For the starting noise and the context noise.

        Returns:
            (B, 3, H, W) the next frame in [-1, 1].
        """
        b = context.shape[0]
        if not 0.0 <= context_sigma <= self.cfg.max_sigma:
            raise ValueError(f"context_sigma must be in [0, {self.cfg.max_sigma}]")
        sigma = torch.full((b,), float(context_sigma))
        if context_sigma > 0:
            noise = torch.randn(context.shape, generator=generator)
            context = self.augment.apply(context, sigma, noise)
        bucket = self.augment.bucket(sigma)
        base = context[:, -1] if self.cfg.residual else torch.zeros_like(context[:, -1])
        s = self.cfg.frame_size
        x_T = torch.randn((b, 3, s, s), generator=generator)

        def predict_v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            v = self(x, context, t, bucket, actions)
            if guidance == 1.0:
                return v
            v_uncond = self(x, torch.zeros_like(context), t, bucket, actions)
            return v_uncond + guidance * (v - v_uncond)

        return (base + ddim_sample(predict_v, x_T, self.schedule, steps)).clamp(-1, 1)

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Writes the weights and config (and `extra` tensors, e.g. start frames) to
        one .safetensors file."""
        from safetensors.torch import save_file

        tensors = {f"model.{k}": v.contiguous() for k, v in self.state_dict().items()}
        for k, v in (extra or {}).items():
            tensors[f"extra.{k}"] = torch.as_tensor(v).contiguous()
        meta = {"format": _FORMAT, "config": json.dumps(dataclasses.asdict(self.cfg))}
        save_file(tensors, str(path), metadata=meta)
        return Path(path)

    @staticmethod
    def load(path: str | Path) -> tuple[WorldModel, dict[str, torch.Tensor]]:
        """Reads a file written by `save`; returns the model (eval mode) and the extras.

        Raises:
            FileNotFoundError: No such file.
            ValueError: Not a world-model file.
        """
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such checkpoint: {path}")
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"{path} is not a safetensors file: {exc}") from None
        if meta.get("format") != _FORMAT:
            raise ValueError(
                f"{path} is not a gamengen world model (format {meta.get('format')!r})"
            )
        try:
            raw = json.loads(meta["config"])
            raw = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
            model = WorldModel(WorldModelConfig(**raw))
            weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
            model.load_state_dict(weights)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            msg = str(exc).splitlines()[0] + (" ..." if "\n" in str(exc) else "")
            raise ValueError(f"{path}: weights and config do not fit this version: {msg}") from None
        extras = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
        return model.eval(), extras


def make_batch(
    data: Gameplay,
    targets: np.ndarray,
    cfg: WorldModelConfig,
    schedule: NoiseSchedule,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """One training batch: the noisy target, the augmented context and the v target.

    The diffusion noise goes on the target frame only; the augmentation noise on the
    context frames only; context dropout zeroes whole contexts. With `cfg.residual` the
    diffused quantity is the target minus the last (augmented, not dropped) context frame.

    Args:
        data: The recording.
        targets: (B,) indices t of target frames (from `data.windows(cfg.context)`).
        cfg: The model's config (context, noise_aug, max_sigma, dropout).
        schedule: The diffusion schedule.
        generator: All randomness comes from it.

    Returns:
        x_t (B, 3, H, W), context (B, N, 3, H, W), t (B,), bucket (B,), actions (B, N),
        v (B, 3, H, W), and for checks the clean target x0, the clean context and the
        base (B, 3, H, W) the diffused quantity is relative to (zeros without residual).
    """
    n, b = cfg.context, len(targets)
    idx = targets[:, None] - n + np.arange(n)[None]  # (B, N) context frame indices
    x0 = to_model(data.frames[targets])  # (B, 3, H, W)
    clean = to_model(data.frames[idx])  # (B, N, 3, H, W)
    actions = torch.as_tensor(data.actions[idx], dtype=torch.long)
    t = torch.randint(0, schedule.T, (b,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    aug = NoiseAugmentation(cfg.max_sigma, cfg.n_buckets)
    if cfg.noise_aug:
        sigma = aug.sample(b, generator)
        context = aug.apply(clean, sigma, torch.randn(clean.shape, generator=generator))
    else:
        sigma, context = torch.zeros(b), clean
    base = context[:, -1] if cfg.residual else torch.zeros_like(x0)
    keep = (torch.rand(b, generator=generator) >= cfg.context_dropout).float()
    context = context * keep[:, None, None, None, None]
    return {
        "x_t": schedule.add_noise(x0 - base, t, noise),
        "context": context,
        "t": t,
        "bucket": aug.bucket(sigma),
        "actions": actions,
        "v": schedule.v_target(x0 - base, t, noise),
        "x0": x0,
        "clean_context": clean,
        "base": base,
    }


def v_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean squared error of the v-prediction."""
    v = model(batch["x_t"], batch["context"], batch["t"], batch["bucket"], batch["actions"])
    return F.mse_loss(v, batch["v"])


def train_world_model(
    model: WorldModel,
    data: Gameplay,
    cfg: TrainConfig,
    on_step: Any = None,
) -> TrainState:
    """Trains on every window of `data` with the shared loop (`minirepro.core.train`).

    Args:
        model: The world model; its config sets context, augmentation and dropout.
        data: The recording (same game, frame size and action set as the model).
        cfg: The trainer's settings (steps, batch size, lr, seed, ...).
        on_step: Passed to `train`.
    """
    mc = model.cfg
    if data.frame_size != mc.frame_size or len(data.action_names) != mc.n_actions:
        raise ValueError(
            f"data ({data.frame_size}px, {len(data.action_names)} actions) does not match the "
            f"model ({mc.frame_size}px, {mc.n_actions} actions)"
        )
    windows = data.windows(mc.context)
    if len(windows) == 0:
        raise ValueError(f"no episode of the recording has more than {mc.context} frames")

    def get_batch(step: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        pick = torch.randint(0, len(windows), (cfg.batch_size,), generator=g).numpy()
        batch = make_batch(data, windows[pick], mc, model.schedule, g)
        del batch["x0"], batch["clean_context"], batch["base"]
        return batch

    return train(model, cfg, get_batch, loss_fn=v_loss, on_step=on_step)
