"""Phase 1 players: random play, honest scripted agents, and PPO from stable-baselines3.

A policy is `policy(env, frame) -> action index`. The scripted agents read privileged game
state (ViZDoom's object labels, Pong's RAM) rather than pixels; they are stand-ins for the
paper's trained agent that cost nothing to "train", and say so. `train_ppo` trains a real
PPO agent on the frames (the paper's phase 1), for a budget larger than the quick preset.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minirepro.papers.gamengen.envs import AtariEnv, DoomEnv, GameEnv

__all__ = ["GymGame", "PPOPolicy", "RandomPolicy", "ScriptedPolicy", "train_ppo"]


class RandomPolicy:
    """Uniformly random actions (the paper's comparison to agent play).

    Args:
        seed: Seeds the policy's own generator.
    """

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, env: GameEnv, frame: np.ndarray) -> int:
        return int(self.rng.integers(env.n_actions))


class ScriptedPolicy:
    """A hand-written agent that plays reasonably, with `epsilon` random actions.

    ViZDoom basic-like scenarios: strafe towards the monster (from the labels buffer) and
    shoot when it is centred. Pong: move the paddle towards the ball (from RAM).
    `hold` repeats each chosen action for a few steps, as a human would, so that the data
    has both sustained motion and turns.

    Args:
        epsilon: Probability of a uniformly random action at a decision.
        hold: Steps each decision is held for (1: decide every step).
        seed: The generator of the random choices.
    """

    def __init__(self, epsilon: float = 0.3, hold: int = 1, seed: int = 0) -> None:
        if not 0.0 <= epsilon <= 1.0 or hold < 1:
            raise ValueError(f"need 0 <= epsilon <= 1 and hold >= 1, got {epsilon}, {hold}")
        self.epsilon, self.hold = epsilon, hold
        self.rng = np.random.default_rng(seed)
        self._left, self._action = 0, 0

    def __call__(self, env: GameEnv, frame: np.ndarray) -> int:
        if self._left > 0:
            self._left -= 1
            return self._action
        if self.rng.random() < self.epsilon:
            action = int(self.rng.integers(env.n_actions))
        else:
            action = self._choose(env)
        self._action, self._left = action, self.hold - 1
        return action

    def _choose(self, env: GameEnv) -> int:
        names = env.action_names
        if isinstance(env, DoomEnv):
            offset = env.monster_offset()
            if offset is None:
                return names.index("MOVE_LEFT") if "MOVE_LEFT" in names else 0
            if abs(offset) < 0.08 and "ATTACK" in names:
                return names.index("ATTACK")
            side = "MOVE_LEFT" if offset < 0 else "MOVE_RIGHT"
            return names.index(side) if side in names else 0
        if isinstance(env, AtariEnv) and env.name == "atari_pong":
            ram = env.ram()
            paddle, ball = int(ram[51]), int(ram[54])  # player paddle and ball rows
            if ball == 0 or abs(ball - paddle - 8) < 4:
                return 0
            return names.index("RIGHT") if ball < paddle + 8 else names.index("LEFT")
        raise ValueError(f"no scripted agent for {env.name}; use RandomPolicy or train_ppo")


class GymGame:
    """A `GameEnv` as a gymnasium.Env (frames as observations), for stable-baselines3.

    Args:
        env: The game.
        max_steps: Truncate episodes after this many steps.
    """

    def __new__(cls, env: GameEnv, max_steps: int = 1000) -> Any:
        import gymnasium as gym

        class _Game(gym.Env):
            metadata: dict[str, Any] = {"render_modes": []}

            def __init__(self) -> None:
                s = env.frame_size
                self.observation_space = gym.spaces.Box(0, 255, (s, s, 3), np.uint8)
                self.action_space = gym.spaces.Discrete(env.n_actions)
                self.game, self._t = env, 0

            def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
                super().reset(seed=seed)
                self._t = 0
                return env.reset(), {}

            def step(self, action: Any) -> Any:
                frame, reward, done = env.step(int(action))
                self._t += 1
                return frame, reward, done, self._t >= max_steps and not done, {}

        return _Game()


class PPOPolicy:
    """A trained stable-baselines3 model as a policy (stochastic actions).

    Args:
        model: The SB3 model (`train_ppo` returns one).
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, env: GameEnv, frame: np.ndarray) -> int:
        action, _ = self.model.predict(frame, deterministic=False)
        return int(action)


def train_ppo(env: GameEnv, steps: int, seed: int = 0, **ppo_kwargs: Any) -> PPOPolicy:
    """Trains PPO (stable-baselines3) on `env`'s frames with an MLP policy.

    Small frames (32x32) are below what SB3's Nature CNN accepts, so the policy is an MLP on
    the flattened, /255-normalised frame; the paper's agent is a CNN on 160x120 frames.

    Args:
        env: The game (its frames are the observations).
        steps: Environment steps of training.
        seed: SB3's seed.
        **ppo_kwargs: Passed to `stable_baselines3.PPO` (n_steps, batch_size, ...).

    Returns:
        The trained policy.
    """
    from stable_baselines3 import PPO

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    kwargs = {
        "n_steps": 256,
        "batch_size": 64,
        "n_epochs": 4,
        "learning_rate": 3e-4,
        "device": "cpu",
    }
    kwargs.update(ppo_kwargs)
    model = PPO("MlpPolicy", GymGame(env), seed=seed, verbose=0, **kwargs)
    model.learn(total_timesteps=steps)
    return PPOPolicy(model)
