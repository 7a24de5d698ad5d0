"""Recorded gameplay: frames, actions, rewards and episode ids, saved as one .npz file.

Convention: `actions[i]` is pressed on `frames[i]` and leads to `frames[i + 1]` when
`episodes[i + 1] == episodes[i]`; the last frame of an episode keeps the action that ended
it. A training example for a context of N frames is `frames[t-N:t]`, `actions[t-N:t]`
(the last one is the action being taken) and the target `frames[t]`, all in one episode.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minirepro.papers.gamengen.envs import GameEnv

__all__ = ["Gameplay", "Recorder", "record"]

_FORMAT = "minirepro.gamengen.gameplay/1"
Policy = Callable[[GameEnv, np.ndarray], int]


@dataclass(frozen=True)
class Gameplay:
    """Trajectories of one game.

    Attributes:
        frames: (N, S, S, 3) uint8.
        actions: (N,) int64, the action pressed on each frame.
        rewards: (N,) float32, the reward that action earned.
        episodes: (N,) int64, the episode of each frame (non-decreasing).
        action_names: One name per action index.
        game: The game's id.
    """

    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    episodes: np.ndarray
    action_names: tuple[str, ...]
    game: str

    def __post_init__(self) -> None:
        f, a, r, e = self.frames, self.actions, self.rewards, self.episodes
        if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8:
            raise ValueError(f"frames must be (N, H, W, 3) uint8, got {f.shape} {f.dtype}")
        n = len(f)
        for name, arr in (("actions", a), ("rewards", r), ("episodes", e)):
            if arr.ndim != 1 or len(arr) != n:
                raise ValueError(
                    f"{name} has shape {arr.shape} but there are {n} frames: every frame needs "
                    f"exactly one {name[:-1]}"
                )
        if not np.issubdtype(a.dtype, np.integer) or not np.issubdtype(e.dtype, np.integer):
            raise ValueError(f"actions and episodes must be integers, got {a.dtype}, {e.dtype}")
        if n and (a.min() < 0 or a.max() >= len(self.action_names)):
            raise ValueError(
                f"actions must be in [0, {len(self.action_names)}) for {self.action_names}, "
                f"got [{a.min()}, {a.max()}]"
            )
        if n > 1 and np.any(np.diff(e) < 0):
            raise ValueError("episode ids must be non-decreasing (frames in play order)")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def frame_size(self) -> int:
        return self.frames.shape[1]

    def windows(self, context: int) -> np.ndarray:
        """Indices t of every target frame with `context` earlier frames in its episode.

        Returns:
            (M,) int64, each t with episodes[t - context] == episodes[t].
        """
        if context < 1:
            raise ValueError(f"context must be >= 1, got {context}")
        if len(self) <= context:
            return np.zeros(0, np.int64)
        t = np.arange(context, len(self))
        return t[self.episodes[t - context] == self.episodes[t]]

    def episode_returns(self) -> np.ndarray:
        """Total reward of each episode, in order."""
        _, idx = np.unique(self.episodes, return_inverse=True)
        return np.bincount(idx, weights=self.rewards)

    @staticmethod
    def concat(parts: list[Gameplay]) -> Gameplay:
        """Joins recordings of one game; episode ids are renumbered to stay distinct."""
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        for p in parts[1:]:
            if (p.game, p.action_names, p.frames.shape[1:]) != (
                first.game, first.action_names, first.frames.shape[1:],
            ):  # fmt: skip
                raise ValueError(f"cannot join {p.game} {p.frames.shape} with {first.game}")
        episodes, offset = [], 0
        for p in parts:
            episodes.append(p.episodes - (p.episodes.min() if len(p) else 0) + offset)
            offset = int(episodes[-1].max()) + 1 if len(p) else offset
        return Gameplay(
            np.concatenate([p.frames for p in parts]),
            np.concatenate([p.actions for p in parts]),
            np.concatenate([p.rewards for p in parts]),
            np.concatenate(episodes),
            first.action_names,
            first.game,
        )

    def save(self, path: str | Path) -> Path:
        """Writes a compressed .npz file (frames, actions, rewards, episodes, metadata)."""
        path = Path(path)
        meta = {"format": _FORMAT, "game": self.game, "action_names": list(self.action_names)}
        with path.open("wb") as f:
            np.savez_compressed(
                f, frames=self.frames, actions=self.actions, rewards=self.rewards,
                episodes=self.episodes, meta=np.array(json.dumps(meta)),
            )  # fmt: skip
        return path

    @staticmethod
    def load(path: str | Path) -> Gameplay:
        """Reads a file written by `save`.

        Raises:
            FileNotFoundError: No such file.
            ValueError: The file is not a gameplay dataset, or its arrays disagree.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such gameplay file: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path} is not a gameplay .npz file: {exc}") from None
        missing = {"frames", "actions", "rewards", "episodes", "meta"} - set(arrays)
        if missing:
            raise ValueError(f"{path} is not a gameplay dataset: it lacks {sorted(missing)}")
        meta = json.loads(str(arrays["meta"]))
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path}: unknown format {meta.get('format')!r}; expected {_FORMAT}")
        return Gameplay(
            arrays["frames"], arrays["actions"], arrays["rewards"], arrays["episodes"],
            tuple(meta["action_names"]), meta["game"],
        )  # fmt: skip


class Recorder:
    """Collects a trajectory one step at a time, for a loop the user writes.

    `add(frame, action, reward)` appends the frame an action was pressed on; `end_episode()`
    starts the next episode; `gameplay()` returns the `Gameplay`.
    """

    def __init__(self, game: str, action_names: tuple[str, ...]) -> None:
        self.game, self.action_names = game, tuple(action_names)
        self._frames: list[np.ndarray] = []
        self._actions: list[int] = []
        self._rewards: list[float] = []
        self._episodes: list[int] = []
        self._episode = 0

    def add(self, frame: np.ndarray, action: int, reward: float) -> None:
        if self._frames and frame.shape != self._frames[0].shape:
            raise ValueError(f"frame shape {frame.shape} differs from {self._frames[0].shape}")
        self._frames.append(np.asarray(frame, np.uint8))
        self._actions.append(int(action))
        self._rewards.append(float(reward))
        self._episodes.append(self._episode)

    def end_episode(self) -> None:
        if self._episodes and self._episodes[-1] == self._episode:
            self._episode += 1

    def gameplay(self) -> Gameplay:
        if not self._frames:
            raise ValueError("nothing recorded")
        return Gameplay(
            np.stack(self._frames), np.asarray(self._actions, np.int64),
            np.asarray(self._rewards, np.float32), np.asarray(self._episodes, np.int64),
            self.action_names, self.game,
        )  # fmt: skip


def record(env: GameEnv, policy: Policy, n_steps: int) -> Gameplay:
    """Plays `n_steps` actions of `policy` in `env` (resetting at episode ends) and records.

    Args:
        env: The game.
        policy: `policy(env, frame) -> action index`.
        n_steps: Frames to record, >= 1.

    Returns:
        The `Gameplay` of `n_steps` frames.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    rec = Recorder(env.name, env.action_names)
    frame = env.reset()
    for _ in range(n_steps):
        action = policy(env, frame)
        nxt, reward, done = env.step(action)
        rec.add(frame, action, reward)
        if done:
            rec.end_episode()
            frame = env.reset()
        else:
            frame = nxt
    return rec.gameplay()
