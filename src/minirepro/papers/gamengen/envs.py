"""Real games that run headless: ViZDoom (the paper's DOOM) and Atari via ALE.

Both sit behind one small interface, `GameEnv`: `reset`, and `step` with a discrete action
index, the frame as a small uint8 RGB array. (ViZDoom's save/load did not restore the same
frames here, so there are no counterfactual branches: see NOTES.md.)

    env = make_env("doom_basic", frame_size=32, seed=0)
    frame = env.reset()                 # (32, 32, 3) uint8
    frame, reward, done = env.step(1)   # MOVE_LEFT for 4 tics
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

import numpy as np

__all__ = ["GAMES", "AtariEnv", "DoomEnv", "GameEnv", "make_env", "resize_frame"]


def resize_frame(frame: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Area-downsamples an RGB frame.

    Args:
        frame: (H, W, 3) uint8.
        size: Output side, or (height, width).

    Returns:
        (h, w, 3) uint8.
    """
    from PIL import Image

    h, w = (size, size) if isinstance(size, int) else size
    if frame.shape[:2] == (h, w):
        return np.ascontiguousarray(frame)
    return np.asarray(Image.fromarray(frame).resize((w, h), Image.BOX))


class GameEnv(ABC):
    """A game with discrete actions whose frames are small RGB images.

    Attributes:
        name: The game's id, as `make_env` takes it.
        action_names: One name per action index (index 0 is "NOOP").
        frame_size: Side of the square frames returned.
    """

    name: str
    action_names: tuple[str, ...]
    frame_size: int

    @property
    def n_actions(self) -> int:
        return len(self.action_names)

    @abstractmethod
    def reset(self) -> np.ndarray:
        """Starts a new episode; returns its first frame, (S, S, 3) uint8."""

    @abstractmethod
    def step(self, action: int) -> tuple[np.ndarray, float, bool]:
        """Plays one action; returns (next frame, reward, episode over).

        After `done` the returned frame is the last one seen; call `reset` next.
        """

    @abstractmethod
    def close(self) -> None:
        """Frees the engine."""

    def _check_action(self, action: int) -> int:
        if not 0 <= int(action) < self.n_actions:
            raise ValueError(
                f"{self.name}: action {action} out of range; actions are 0..{self.n_actions - 1} "
                f"({', '.join(self.action_names)})"
            )
        return int(action)

    def __enter__(self) -> GameEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DoomEnv(GameEnv):
    """A ViZDoom scenario (the real DOOM engine with freedoom, shipped in the wheel).

    Actions are one button at a time plus NOOP; each is held for `frame_skip` tics.

    Args:
        scenario: A config in `vizdoom.scenarios_path`, e.g. "basic" (strafe and shoot
            the monster; the paper's own game is full DOOM, which needs the original WAD).
        frame_size: Side of the square frames.
        seed: Engine seed (monster placement).
        frame_skip: Tics per action.
        episode_tics: Episode time limit in tics (None: the scenario's; basic's 300 tics
            is 75 actions, too short for 32+ step rollouts from one episode).
    """

    def __init__(
        self,
        scenario: str = "basic",
        frame_size: int = 32,
        seed: int = 0,
        frame_skip: int = 4,
        episode_tics: int | None = None,
    ) -> None:
        import vizdoom as vzd

        path = os.path.join(vzd.scenarios_path, f"{scenario}.cfg")
        if not os.path.isfile(path):
            known = sorted(f[:-4] for f in os.listdir(vzd.scenarios_path) if f.endswith(".cfg"))
            raise ValueError(f"unknown ViZDoom scenario {scenario!r}; known: {', '.join(known)}")
        if frame_size < 8 or frame_skip < 1:
            raise ValueError(
                f"need frame_size >= 8 and frame_skip >= 1, got {frame_size}, {frame_skip}"
            )
        game = vzd.DoomGame()
        game.load_config(path)
        game.set_window_visible(False)
        game.set_sound_enabled(False)
        game.set_screen_resolution(vzd.ScreenResolution.RES_160X120)
        game.set_screen_format(vzd.ScreenFormat.RGB24)
        game.set_labels_buffer_enabled(True)  # the scripted agent reads where the monster is
        game.set_mode(vzd.Mode.PLAYER)
        game.set_seed(int(seed) % 2**31)
        if episode_tics is not None:
            game.set_episode_timeout(int(episode_tics))
        game.init()
        self._game = game
        self._buttons = [b.name for b in game.get_available_buttons()]
        self.name = f"doom_{scenario}"
        self.action_names = ("NOOP", *self._buttons)
        self.frame_size = frame_size
        self.frame_skip = frame_skip
        self._last = np.zeros((frame_size, frame_size, 3), np.uint8)

    def _buttons_for(self, action: int) -> list[int]:
        pressed = [0] * len(self._buttons)
        if action > 0:
            pressed[action - 1] = 1
        return pressed

    def _frame(self) -> np.ndarray:
        state = self._game.get_state()
        if state is not None:
            self._last = resize_frame(state.screen_buffer, self.frame_size)
        return self._last

    def reset(self) -> np.ndarray:
        self._game.new_episode()
        return self._frame()

    def step(self, action: int) -> tuple[np.ndarray, float, bool]:
        action = self._check_action(action)
        reward = self._game.make_action(self._buttons_for(action), self.frame_skip)
        done = self._game.is_episode_finished()
        return self._frame(), float(reward), bool(done)

    def monster_offset(self) -> float | None:
        """Horizontal offset of the nearest non-player object from the screen centre, in
        [-1, 1] of the half-width; None when none is visible (for the scripted agent)."""
        state = self._game.get_state()
        if state is None:
            return None
        width = self._game.get_screen_width()
        xs = [lab.x + lab.width / 2 for lab in state.labels if lab.object_name != "DoomPlayer"]
        if not xs:
            return None
        x = min(xs, key=lambda v: abs(v - width / 2))
        return (x - width / 2) / (width / 2)

    def close(self) -> None:
        self._game.close()


class AtariEnv(GameEnv):
    """An Atari 2600 game through ALE (ROMs ship in `ale-py`), sticky actions off.

    Args:
        game: ALE game name, e.g. "Pong".
        frame_size: Side of the square frames.
        seed: ALE seed.
        frame_skip: Emulator frames per action.
        actions: The ALE action names to expose (NOOP first); the game's minimal set if None.
        crop: Rows (top, bottom) of the 210-row screen to keep, e.g. Pong's playfield.
    """

    def __init__(
        self,
        game: str = "Pong",
        frame_size: int = 32,
        seed: int = 0,
        frame_skip: int = 4,
        actions: tuple[str, ...] | None = None,
        crop: tuple[int, int] | None = None,
    ) -> None:
        import ale_py
        import gymnasium as gym

        gym.register_envs(ale_py)
        try:
            env = gym.make(
                f"ALE/{game}-v5", obs_type="rgb", frameskip=frame_skip,
                repeat_action_probability=0.0,
            )  # fmt: skip
        except gym.error.Error as exc:
            raise ValueError(f"unknown ALE game {game!r}: {exc}") from None
        self._env = env
        meanings = env.unwrapped.get_action_meanings()
        names = actions or tuple(meanings)
        missing = [a for a in names if a not in meanings]
        if missing:
            raise ValueError(f"{game} has no action {missing}; it has {meanings}")
        self._ale_actions = [meanings.index(a) for a in names]
        self.name = f"atari_{game.lower()}"
        self.action_names = tuple(names)
        self.frame_size = frame_size
        self._crop = crop
        self._seed = int(seed)
        self._episodes = 0

    def _frame(self, obs: np.ndarray) -> np.ndarray:
        if self._crop is not None:
            obs = obs[self._crop[0] : self._crop[1]]
        return resize_frame(obs, self.frame_size)

    def ram(self) -> np.ndarray:
        """The console's 128 bytes of RAM (for scripted agents)."""
        return self._env.unwrapped.ale.getRAM()

    def reset(self) -> np.ndarray:
        obs, _ = self._env.reset(seed=self._seed + self._episodes)
        self._episodes += 1
        return self._frame(obs)

    def step(self, action: int) -> tuple[np.ndarray, float, bool]:
        action = self._check_action(action)
        obs, reward, term, trunc, _ = self._env.step(self._ale_actions[action])
        return self._frame(obs), float(reward), bool(term or trunc)

    def close(self) -> None:
        self._env.close()


GAMES = ("doom_basic", "doom_defend_the_center", "atari_pong", "atari_breakout")


def make_env(
    game: str, frame_size: int = 32, seed: int = 0, episode_steps: int | None = None
) -> GameEnv:
    """Builds one of `GAMES` with the action sets used here.

    Args:
        game: "doom_<scenario>" (any ViZDoom scenario) or "atari_pong" / "atari_breakout".
        frame_size: Side of the square frames, 8..256.
        seed: The engine's seed.
        episode_steps: ViZDoom only: the episode time limit in actions (None: scenario's).

    Raises:
        ValueError: An unknown game or a frame size out of range.
    """
    if not 8 <= frame_size <= 256:
        raise ValueError(f"frame_size must be in [8, 256], got {frame_size}")
    if game.startswith("doom_"):
        tics = None if episode_steps is None else 4 * episode_steps
        return DoomEnv(game[len("doom_") :], frame_size=frame_size, seed=seed, episode_tics=tics)
    if game == "atari_pong":  # the playfield only; RIGHT moves the paddle up, LEFT down
        return AtariEnv("Pong", frame_size, seed, actions=("NOOP", "RIGHT", "LEFT"), crop=(34, 194))
    if game == "atari_breakout":
        return AtariEnv("Breakout", frame_size, seed, actions=("NOOP", "FIRE", "RIGHT", "LEFT"))
    raise ValueError(f"unknown game {game!r}; known: {', '.join(GAMES)} (or any doom_<scenario>)")
