"""The real games: ViZDoom and ALE, headless, and the agents that play them."""

import numpy as np
import pytest

pytest.importorskip("vizdoom", reason="pip install -e '.[gamengen]'")

from minirepro.papers.gamengen import (  # noqa: E402
    RandomPolicy,
    ScriptedPolicy,
    make_env,
    record,
    train_ppo,
)


def test_doom_strafing_moves_the_view():
    with make_env("doom_basic", frame_size=32, seed=0) as env:
        assert env.action_names == ("NOOP", "MOVE_LEFT", "MOVE_RIGHT", "ATTACK")
        first = env.reset()
        assert first.shape == (32, 32, 3) and first.dtype == np.uint8
        for _ in range(3):
            frame, reward, done = env.step(env.action_names.index("MOVE_LEFT"))
        assert np.abs(frame.astype(int) - first).mean() > 1.0
        with pytest.raises(ValueError, match="out of range"):
            env.step(7)


def test_scripted_agent_beats_random_play_in_doom():
    with make_env("doom_basic", frame_size=16, seed=5) as env:
        agent = record(env, ScriptedPolicy(epsilon=0.1, seed=0), 400).episode_returns()
        rand = record(env, RandomPolicy(seed=0), 400).episode_returns()
    assert agent.mean() > rand.mean() + 30


def test_atari_pong_records_with_the_same_interface():
    pytest.importorskip("ale_py", reason="pip install -e '.[gamengen]'")
    with make_env("atari_pong", frame_size=32, seed=0) as env:
        assert env.action_names == ("NOOP", "RIGHT", "LEFT")
        play = record(env, ScriptedPolicy(epsilon=0.2, seed=0), 60)
    assert play.frames.shape == (60, 32, 32, 3) and play.game == "atari_pong"


def test_unknown_games_and_sizes_are_rejected():
    with pytest.raises(ValueError, match="unknown game"):
        make_env("tetris")
    with pytest.raises(ValueError, match="unknown ViZDoom scenario"):
        make_env("doom_nowhere")
    with pytest.raises(ValueError, match="frame_size"):
        make_env("doom_basic", frame_size=4)


def test_ppo_from_stable_baselines3_trains_and_plays():
    pytest.importorskip("stable_baselines3", reason="pip install -e '.[gamengen]'")
    with make_env("doom_basic", frame_size=16, seed=0, episode_steps=20) as env:
        policy = train_ppo(env, steps=64, n_steps=32, batch_size=16, n_epochs=1)
        play = record(env, policy, 30)
    assert set(play.actions.tolist()) <= {0, 1, 2, 3}
