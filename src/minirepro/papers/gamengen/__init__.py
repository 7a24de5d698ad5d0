"""GameNGen: Diffusion Models Are Real-Time Game Engines (Valevski et al., 2024) —
https://arxiv.org/abs/2408.14837

Claim: a diffusion model conditioned on past frames and actions simulates DOOM
interactively (20 FPS on one TPU) at next-frame PSNR 29.4; noise augmentation of the
context frames keeps long autoregressive rollouts stable.

Implemented here (no official code exists):

- envs: real games headless behind one interface, ViZDoom (the DOOM engine with
  freedoom) and Atari through ALE.
- agents, dataset: phase 1, a scripted agent (reads the engine's object labels; honest
  stand-in for the paper's PPO agent), random play, PPO from stable-baselines3
  (`train_ppo`), and a recorder of frames/actions/rewards/episodes to one .npz file.
- unet, diffusion, world_model: phase 2, a small pixel-space U-Net; past frames
  concatenated on channels; one learned token per past action attended by
  cross-attention; v-prediction; context noise augmentation sigma ~ U(0, 0.7) in 10
  buckets whose embedding is added to the timestep's; context dropout 0.1 (guidance);
  DDIM with few steps. Trained with the shared loop (`minirepro.core.train`).
- evaluate: teacher-forced and autoregressive PSNR, copy-last-frame baseline, action
  sensitivity. play: a session and a local web page to play the model with the keyboard.

Deviations: 32x32 pixel frames instead of Stable Diffusion 1.4 latents of 320x240 frames
(so no autoencoder and no decoder fine-tuning), a context of 4 frames instead of 64,
ViZDoom's "basic" scenario instead of the full E1M1, minutes of CPU training instead of
700k TPU steps. See NOTES.md.

Run: `minirepro run gamengen` (quick preset), then `minirepro play gamengen`.
"""

from minirepro.papers.gamengen.agents import (
    GymGame,
    PPOPolicy,
    RandomPolicy,
    ScriptedPolicy,
    train_ppo,
)
from minirepro.papers.gamengen.dataset import Gameplay, Recorder, record
from minirepro.papers.gamengen.diffusion import (
    NoiseAugmentation,
    NoiseSchedule,
    ddim_sample,
    ddim_timesteps,
)
from minirepro.papers.gamengen.envs import GAMES, AtariEnv, DoomEnv, GameEnv, make_env
from minirepro.papers.gamengen.evaluate import (
    RolloutResult,
    action_sensitivity,
    opposite_actions,
    psnr,
    rollout,
    rollout_starts,
    teacher_forced,
)
from minirepro.papers.gamengen.play import GameSession, make_server
from minirepro.papers.gamengen.repro import PRESETS, Config, run
from minirepro.papers.gamengen.unet import UNet, UNetConfig
from minirepro.papers.gamengen.world_model import (
    WorldModel,
    WorldModelConfig,
    make_batch,
    to_model,
    to_uint8,
    train_world_model,
    v_loss,
)
from minirepro.registry import Paper

PAPER = Paper(
    id="gamengen",
    title="GameNGen: diffusion models as real-time game engines",
    arxiv="2408.14837",
    claims=[
        "teacher-forced next-frame PSNR above copying the last frame",
        "noise augmentation: >= 2 dB better PSNR after 32+ autoregressive steps",
        "4-step DDIM within 1 dB of 50 steps",
        ">= 90% of held-out frames move the right way with the action",
        ">= 20 interactive frames per second on 2 CPU cores",
    ],
    config=Config,
    presets=PRESETS,
    run=run,
)

__all__ = [
    "GAMES",
    "PAPER",
    "PRESETS",
    "AtariEnv",
    "Config",
    "DoomEnv",
    "GameEnv",
    "GameSession",
    "Gameplay",
    "GymGame",
    "NoiseAugmentation",
    "NoiseSchedule",
    "PPOPolicy",
    "RandomPolicy",
    "Recorder",
    "RolloutResult",
    "ScriptedPolicy",
    "UNet",
    "UNetConfig",
    "WorldModel",
    "WorldModelConfig",
    "action_sensitivity",
    "ddim_sample",
    "ddim_timesteps",
    "make_batch",
    "make_env",
    "make_server",
    "opposite_actions",
    "psnr",
    "record",
    "rollout",
    "rollout_starts",
    "run",
    "teacher_forced",
    "to_model",
    "to_uint8",
    "train_ppo",
    "train_world_model",
    "v_loss",
]
