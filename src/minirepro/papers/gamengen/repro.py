"""The gamengen reproduction: record a real game, learn it, check the paper's claims.

Per seed: phase 1 records the scripted agent and random play in ViZDoom (training data from
one engine seed, held-out data from another); phase 2 trains two world models with the
shared training loop, one with context noise augmentation and one without (in two worker
processes at once); then teacher-forced PSNR, autoregressive rollouts, 4 vs 50 DDIM steps,
action sensitivity and interactive frames per second are measured.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from minirepro.core.precision import check_precision
from minirepro.core.results import AtLeast, Between, Result, RunDir
from minirepro.core.seed import seed_everything
from minirepro.core.threads import num_threads, process_pool
from minirepro.core.train import TrainConfig
from minirepro.papers.gamengen.agents import RandomPolicy, ScriptedPolicy
from minirepro.papers.gamengen.dataset import Gameplay, record
from minirepro.papers.gamengen.envs import make_env
from minirepro.papers.gamengen.evaluate import (
    action_sensitivity,
    rollout,
    rollout_starts,
    teacher_forced,
)
from minirepro.papers.gamengen.play import GameSession
from minirepro.papers.gamengen.world_model import WorldModel, WorldModelConfig, train_world_model

__all__ = ["PRESETS", "Config", "run"]


@dataclass
class Config:
    """The run's settings.

    Attributes:
        seeds: One full reproduction per seed; Results report mean ± std.
        game: The game (`envs.make_env`); ViZDoom "basic" by default, the paper's engine.
        frame_size: Side of the square frames (the paper: 320x240 -> 40x32x4 latents).
        context: Past frames and actions the model sees ("64" in the paper).
        agent_steps, random_steps: Frames recorded from the scripted agent / random play.
        heldout_steps: Frames of each kind recorded with another engine seed for evaluation.
        episode_steps: Episode time limit in actions (long enough for the rollouts).
        epsilon, hold: The scripted agent's random-action rate and action hold.
        channels, d_emb: The U-Net's width.
        train_steps, batch_size, lr: Training of each world model.
        precision: The trainer's ("bf16": autocast forward, fp32 weights; 1.7x faster
            steps here with AMX; falls back to fp32 without native bf16).
        residual: Diffuse the change from the last context frame (see WorldModelConfig).
        ddim_steps: Denoising steps when playing ("4" in the paper).
        ddim_ref_steps: The many-step sampler it is compared with.
        eval_frames: Held-out frames for teacher-forced PSNR (and 50-step DDIM: a quarter)
            and, at most, for action sensitivity.
        rollouts, rollout_len: Autoregressive rollouts and their length.
        rollout_from: The rollout claim averages PSNR over steps rollout_from..rollout_len.
        infer_sigma: Context noise at inference for the augmented model (its bucket is
            embedded); the model trained without augmentation always sees clean context.
        fps_frames: Frames timed for the interactive frame rate.
        workers: Processes training the two models of a seed at once (1: one after another).
        threads: torch threads in the main process (evaluation, FPS).
    """

    seeds: tuple[int, ...] = (0, 1)
    game: str = "doom_basic"
    frame_size: int = 32
    context: int = 4
    agent_steps: int = 4000
    random_steps: int = 4000
    heldout_steps: int = 1500
    episode_steps: int = 300
    epsilon: float = 0.3
    hold: int = 2
    channels: tuple[int, ...] = (32, 64, 64)
    d_emb: int = 128
    train_steps: int = 500
    batch_size: int = 32
    lr: float = 1e-3
    precision: str = "bf16"
    residual: bool = True
    ddim_steps: int = 4
    ddim_ref_steps: int = 50
    eval_frames: int = 256
    rollouts: int = 16
    rollout_len: int = 48
    rollout_from: int = 32
    infer_sigma: float = 0.1
    fps_frames: int = 40
    workers: int = 2
    threads: int = 1

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if not self.seeds:
            raise ValueError("need at least one seed")
        if not 1 <= self.rollout_from <= self.rollout_len:
            raise ValueError(f"need 1 <= rollout_from <= rollout_len, got {self.rollout_from}")
        if self.episode_steps < self.context + self.rollout_len:
            raise ValueError("episode_steps must exceed context + rollout_len")
        for name in ("agent_steps", "random_steps", "heldout_steps", "train_steps", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


PRESETS: dict[str, Config] = {
    # seconds: the pipeline end to end, far too little training for the claims to hold
    "smoke": Config(
        seeds=(0,), agent_steps=300, random_steps=300, heldout_steps=200, channels=(16, 32),
        d_emb=32, train_steps=4, batch_size=8, eval_frames=16, rollouts=2, rollout_len=6,
        rollout_from=3, episode_steps=40, fps_frames=4, ddim_ref_steps=8, workers=1,
    ),
    # quiet 2-core machine: 346 s at 500 steps and 1 thread; 2 threads for the evaluation in the
    # main process (the training workers are single-threaded) 314 s; 440 steps 302 s; 420 steps 294 s
    "quick": Config(threads=2, train_steps=420),
    "full": Config(
        seeds=(0, 1, 2), agent_steps=30000, random_steps=30000, heldout_steps=4000,
        channels=(64, 128, 128), d_emb=256, train_steps=20000, batch_size=64, lr=5e-4,
        eval_frames=1024, rollouts=64, rollout_len=64, episode_steps=400,
    ),
}  # fmt: skip


def _record(cfg: Config, seed: int) -> tuple[Gameplay, Gameplay, dict[str, float]]:
    """Training and held-out gameplay (another engine seed), and the players' returns."""
    parts: dict[str, list[Gameplay]] = {"train": [], "test": []}
    returns: dict[str, float] = {}
    for split, env_seed, scale in (("train", seed, 1.0), ("test", 10_000 + seed, None)):
        env = make_env(cfg.game, cfg.frame_size, seed=env_seed, episode_steps=cfg.episode_steps)
        with env:
            n_agent = cfg.agent_steps if scale else cfg.heldout_steps
            n_random = cfg.random_steps if scale else cfg.heldout_steps
            agent = record(env, ScriptedPolicy(cfg.epsilon, cfg.hold, seed=env_seed), n_agent)
            rand = record(env, RandomPolicy(seed=env_seed + 1), n_random)
        parts[split] += [agent, rand]
        if split == "train":
            returns = {
                "agent_return": float(agent.episode_returns().mean()),
                "random_return": float(rand.episode_returns().mean()),
            }
    return Gameplay.concat(parts["train"]), Gameplay.concat(parts["test"]), returns


def _model_config(cfg: Config, data: Gameplay, noise_aug: bool) -> WorldModelConfig:
    return WorldModelConfig(
        frame_size=cfg.frame_size, context=cfg.context, n_actions=len(data.action_names),
        channels=cfg.channels, d_emb=cfg.d_emb, action_names=data.action_names,
        noise_aug=noise_aug, attn_max_res=cfg.frame_size // 2, residual=cfg.residual,
    )  # fmt: skip


def _train_job(data: Gameplay, mcfg: WorldModelConfig, tcfg: TrainConfig) -> tuple[dict, list]:
    """Trains one world model (a worker process runs this); returns weights and history."""
    seed_everything(tcfg.seed)
    model = WorldModel(mcfg)
    state = train_world_model(model, data, tcfg)
    return model.state_dict(), state.history


def _train_pair(cfg: Config, data: Gameplay, seed: int) -> dict[str, tuple[WorldModel, list]]:
    """The augmented and the unaugmented model, trained with the same data and seed."""
    tcfg = TrainConfig(
        steps=cfg.train_steps, lr=cfg.lr, weight_decay=0.0, warmup_steps=min(50, cfg.train_steps // 10),
        min_lr_ratio=0.1, batch_size=cfg.batch_size, log_every=max(1, cfg.train_steps // 10),
        seed=seed, precision=cfg.precision,
    )  # fmt: skip
    jobs = {"aug": _model_config(cfg, data, True), "noaug": _model_config(cfg, data, False)}
    if cfg.workers > 1:
        with process_pool(min(cfg.workers, 2), threads=1) as pool:
            futures = {k: pool.submit(_train_job, data, m, tcfg) for k, m in jobs.items()}
            done = {k: f.result() for k, f in futures.items()}
    else:
        done = {k: _train_job(data, m, tcfg) for k, m in jobs.items()}
    out = {}
    for k, (weights, history) in done.items():
        model = WorldModel(jobs[k])
        model.load_state_dict(weights)
        out[k] = (model.eval(), history)
    return out


def _fps(model: WorldModel, data: Gameplay, cfg: Config) -> float:
    """Frames per second of an interactive session (one frame at a time, median)."""
    t = data.windows(cfg.context)[0]
    session = GameSession(
        model, data.frames[t - cfg.context : t], data.actions[t - cfg.context : t],
        steps=cfg.ddim_steps, context_sigma=cfg.infer_sigma,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for _ in range(3):
        session.step(0)
    times = []
    for _ in range(cfg.fps_frames):
        start = time.perf_counter()
        session.step(int(rng.integers(model.cfg.n_actions)))
        times.append(time.perf_counter() - start)
    return 1.0 / statistics.median(times)


def _evaluate_seed(cfg: Config, seed: int, out: RunDir) -> dict[str, Any]:
    seed_everything(seed)
    t0 = time.perf_counter()
    train_data, test_data, returns = _record(cfg, seed)
    t_record = time.perf_counter() - t0
    models = _train_pair(cfg, train_data, seed)
    t_train = time.perf_counter() - t0 - t_record
    aug, noaug = models["aug"][0], models["noaug"][0]
    windows = test_data.windows(cfg.context)
    rng = np.random.default_rng(seed)
    targets = np.sort(rng.choice(windows, size=min(cfg.eval_frames, len(windows)), replace=False))
    tf, copy = teacher_forced(aug, test_data, targets, steps=cfg.ddim_steps, seed=seed)
    few = targets[: max(4, len(targets) // 4)]
    tf_few, _ = teacher_forced(aug, test_data, few, steps=cfg.ddim_steps, seed=seed)
    tf_many, _ = teacher_forced(aug, test_data, few, steps=cfg.ddim_ref_steps, seed=seed)
    starts = rollout_starts(test_data, cfg.context, cfg.rollout_len, cfg.rollouts, seed=seed)
    roll_aug = rollout(
        aug, test_data, starts, cfg.rollout_len, steps=cfg.ddim_steps,
        context_sigma=cfg.infer_sigma, seed=seed,
    )  # fmt: skip
    roll_noaug = rollout(noaug, test_data, starts, cfg.rollout_len, steps=cfg.ddim_steps, seed=seed)
    sens_frames = np.sort(
        rng.choice(windows, size=min(2 * cfg.eval_frames, len(windows)), replace=False)
    )
    sens, n_sens = action_sensitivity(aug, test_data, sens_frames, steps=cfg.ddim_steps, seed=seed)
    fps = _fps(aug, test_data, cfg)
    late = slice(cfg.rollout_from - 1, cfg.rollout_len)
    row = {
        "seed": seed,
        "tf_psnr": tf,
        "copy_psnr": copy,
        "tf_gap": tf - copy,
        "psnr_few": tf_few,
        "psnr_many": tf_many,
        "roll_aug": roll_aug.psnr[:, late].mean().item(),
        "roll_noaug": roll_noaug.psnr[:, late].mean().item(),
        "roll_curve_aug": roll_aug.psnr.mean(0).tolist(),
        "roll_curve_noaug": roll_noaug.psnr.mean(0).tolist(),
        "sensitivity": sens,
        "sensitivity_n": n_sens,
        "fps": fps,
        "record_s": t_record,
        "train_s": t_train,
        "final_loss_aug": models["aug"][1][-1]["loss"],
        "final_loss_noaug": models["noaug"][1][-1]["loss"],
        "train_frames": len(train_data),
        **returns,
    }
    out.log(**row)
    if seed == cfg.seeds[0]:
        from minirepro.papers.gamengen import figures

        figures.save_rollout_media(out, roll_aug, roll_noaug)
        t = starts[0]
        aug.save(
            out.path / "world_model.safetensors",
            extra={
                "start_frames": torch.as_tensor(test_data.frames[t - cfg.context : t]),
                "start_actions": torch.as_tensor(test_data.actions[t - cfg.context : t]),
            },
        )
    return row


def run(cfg: Config, out: RunDir) -> list[Result]:
    """Runs every seed and checks the claims.

    Args:
        cfg: The settings.
        out: The run folder: metrics.jsonl gets one record per seed; figures/ the rollout
            strips, PSNR curves and rollout.gif; world_model.safetensors is the first seed's
            augmented model, ready for `minirepro play gamengen`.

    Returns:
        One Result per claim.
    """
    with num_threads(cfg.threads or None):
        rows = [_evaluate_seed(cfg, s, out) for s in out.track(cfg.seeds, "seeds")]
    from minirepro.papers.gamengen import figures

    figures.save_curves(out, rows, cfg)
    return _results(cfg, rows)


def _results(cfg: Config, rows: list[dict[str, Any]]) -> list[Result]:
    seeds = [r["seed"] for r in rows]
    col = lambda k: [r[k] for r in rows]
    mean = lambda k: float(np.mean(col(k)))
    size = f"{cfg.frame_size}x{cfg.frame_size} pixels, {cfg.train_steps} training steps"
    return [
        Result.check(
            "phase 1: the agent plays better than random play (mean episode return)",
            "trained PPO agent", [a - r for a, r in zip(col("agent_return"), col("random_return"))],
            AtLeast(0.0), seeds, unit="return",
            note=f"scripted agent {mean('agent_return'):.0f} vs random {mean('random_return'):.0f}",
        ),
        Result.check(
            "teacher-forced next-frame PSNR above copying the last frame (dB gap)",
            "PSNR 29.4 dB", col("tf_gap"), AtLeast(0.0), seeds, unit="dB",
            note=f"model {mean('tf_psnr'):.2f} dB vs copy-last {mean('copy_psnr'):.2f} dB ({size})",
        ),
        Result.check(
            f"noise augmentation: PSNR at rollout steps {cfg.rollout_from}-{cfg.rollout_len} "
            "above the model trained without it",
            "augmentation keeps rollouts stable", [a - b for a, b in zip(col("roll_aug"), col("roll_noaug"))],
            AtLeast(2.0), seeds, unit="dB",
            note=f"with {mean('roll_aug'):.2f} dB vs without {mean('roll_noaug'):.2f} dB",
        ),
        Result.check(
            f"{cfg.ddim_steps}-step DDIM within 1 dB of {cfg.ddim_ref_steps} steps",
            "4 steps ~ 20 steps (no loss)", [a - b for a, b in zip(col("psnr_few"), col("psnr_many"))],
            Between(-1.0, 1.0), seeds, unit="dB",
            note=f"{mean('psnr_few'):.2f} vs {mean('psnr_many'):.2f} dB",
        ),
        Result.check(
            "action sensitivity: the frame for the action taken beats the opposite action's",
            "actions control the game", col("sensitivity"), AtLeast(0.9), seeds,
            note=f"{int(mean('sensitivity_n'))} held-out moving left/right frames per seed",
        ),
        Result.check(
            f"interactive frames per second ({cfg.ddim_steps} DDIM steps, {cfg.threads} thread(s))",
            "20 FPS on one TPU v5", col("fps"), AtLeast(20.0), seeds, unit="FPS",
            note=f"{cfg.frame_size}x{cfg.frame_size} pixel-space U-Net on the CPU",
        ),
    ]  # fmt: skip
