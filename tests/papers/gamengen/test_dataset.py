"""The recorder and the on-disk dataset: round trip, validation, windows."""

import numpy as np
import pytest

from minirepro.papers.gamengen import Gameplay, Recorder


def _play(n=20, episodes=(0,) * 12 + (1,) * 8, seed=0):
    rng = np.random.default_rng(seed)
    return Gameplay(
        rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
        rng.integers(0, 3, n),
        rng.normal(size=n).astype(np.float32),
        np.asarray(episodes),
        ("NOOP", "LEFT", "RIGHT"),
        "toy",
    )


def test_round_trip(tmp_path, doom_play):
    path = doom_play.save(tmp_path / "play.npz")
    back = Gameplay.load(path)
    for name in ("frames", "actions", "rewards", "episodes"):
        np.testing.assert_array_equal(getattr(back, name), getattr(doom_play, name))
    assert back.action_names == doom_play.action_names and back.game == "doom_basic"
    # compact: far below the raw uint8 frames
    assert path.stat().st_size < doom_play.frames.nbytes


def test_recorded_frames_follow_the_actions(doom_play):
    assert doom_play.frames.shape[1:] == (16, 16, 3)
    assert len(doom_play.frames) == len(doom_play.actions) == 300
    # frames move: consecutive frames in an episode are not all equal
    same_ep = doom_play.episodes[1:] == doom_play.episodes[:-1]
    diffs = np.abs(doom_play.frames[1:].astype(int) - doom_play.frames[:-1])[same_ep]
    assert (diffs.reshape(len(diffs), -1).mean(1) > 0.5).mean() > 0.3


@pytest.mark.parametrize("field, bad", [("actions", 19), ("rewards", 21), ("episodes", 5)])
def test_mismatched_lengths_are_rejected(field, bad):
    good = _play()
    arrays = {k: getattr(good, k) for k in ("frames", "actions", "rewards", "episodes")}
    arrays[field] = arrays[field][:bad] if bad < 20 else np.resize(arrays[field], bad)
    with pytest.raises(ValueError, match=f"{field} has shape"):
        Gameplay(**arrays, action_names=good.action_names, game="toy")


def test_bad_values_are_rejected():
    good = _play()
    with pytest.raises(ValueError, match="actions must be in"):
        Gameplay(good.frames, good.actions + 5, good.rewards, good.episodes, good.action_names, "t")
    with pytest.raises(ValueError, match="uint8"):
        Gameplay(
            good.frames.astype(np.float32),
            good.actions,
            good.rewards,
            good.episodes,
            good.action_names,
            "t",
        )
    with pytest.raises(ValueError, match="non-decreasing"):
        Gameplay(
            good.frames, good.actions, good.rewards, good.episodes[::-1], good.action_names, "t"
        )


def test_load_rejects_other_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        Gameplay.load(tmp_path / "missing.npz")
    text = tmp_path / "notes.npz"
    text.write_text("not a zip")
    with pytest.raises(ValueError, match="not a gameplay"):
        Gameplay.load(text)
    other = tmp_path / "other.npz"
    np.savez(other, frames=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="lacks"):
        Gameplay.load(other)


def test_windows_stay_inside_episodes():
    play = _play()
    w = play.windows(4)
    assert np.all(play.episodes[w - 4] == play.episodes[w])
    # episode 0 has 12 frames -> targets 4..11, episode 1 has 8 -> targets 16..19
    np.testing.assert_array_equal(w, [*range(4, 12), *range(16, 20)])
    assert len(play.windows(20)) == 0
    with pytest.raises(ValueError):
        play.windows(0)


def test_recorder_and_concat():
    rec = Recorder("toy", ("NOOP", "LEFT"))
    for i in range(5):
        rec.add(np.full((4, 4, 3), i, np.uint8), i % 2, 1.0)
        if i == 2:
            rec.end_episode()
    play = rec.gameplay()
    np.testing.assert_array_equal(play.episodes, [0, 0, 0, 1, 1])
    np.testing.assert_allclose(play.episode_returns(), [3.0, 2.0])
    both = Gameplay.concat([play, play])
    np.testing.assert_array_equal(both.episodes, [0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    with pytest.raises(ValueError, match="frame shape"):
        rec.add(np.zeros((5, 5, 3), np.uint8), 0, 0.0)
