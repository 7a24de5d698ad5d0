"""Shared fixtures: a short ViZDoom recording and a tiny untrained world model."""

import pytest

from minirepro.papers.gamengen import (
    RandomPolicy,
    ScriptedPolicy,
    WorldModel,
    WorldModelConfig,
    make_env,
    record,
)
from minirepro.papers.gamengen.dataset import Gameplay


@pytest.fixture(scope="session")
def doom_play():
    """~300 frames of ViZDoom basic at 16x16: scripted agent then random play."""
    pytest.importorskip("vizdoom", reason="pip install -e '.[gamengen]'")
    with make_env("doom_basic", frame_size=16, seed=3, episode_steps=60) as env:
        agent = record(env, ScriptedPolicy(0.3, seed=0), 150)
        rand = record(env, RandomPolicy(seed=1), 150)
    return Gameplay.concat([agent, rand])


def tiny_model(noise_aug: bool = True, **kw) -> WorldModel:
    cfg = WorldModelConfig(
        frame_size=16, context=3, n_actions=4, channels=(16, 16), d_emb=32, n_head=2,
        action_names=("NOOP", "MOVE_LEFT", "MOVE_RIGHT", "ATTACK"), noise_aug=noise_aug,
        T=100, **kw,
    )  # fmt: skip
    return WorldModel(cfg)


@pytest.fixture(autouse=True)
def _one_thread():
    # These models are tiny: one intra-op thread is faster than two, and far faster than
    # two on a loaded 2-core machine (per-op synchronisation).
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
