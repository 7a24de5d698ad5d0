"""PSNR, rollouts and action sensitivity."""

import math

import numpy as np
import pytest
import torch

from minirepro.papers.gamengen import (
    action_sensitivity,
    opposite_actions,
    psnr,
    rollout,
    rollout_starts,
    teacher_forced,
)

from .conftest import tiny_model


def test_psnr_known_value():
    a = torch.zeros(2, 3, 4, 4)
    b = a + 0.2  # 0.1 on the [0, 1] scale: MSE 0.01 -> 20 dB
    torch.testing.assert_close(psnr(a, b), torch.full((2,), 20.0))
    assert math.isfinite(psnr(a, a)[0].item())


def test_opposite_actions():
    names = ("NOOP", "MOVE_LEFT", "MOVE_RIGHT", "ATTACK")
    assert opposite_actions(names) == {1: 2, 2: 1}
    assert opposite_actions(("NOOP", "RIGHT", "LEFT")) == {1: 2, 2: 1}
    assert opposite_actions(("NOOP", "FIRE")) == {}


def test_rollout_and_teacher_forcing_shapes(doom_play):
    model = tiny_model().eval()
    starts = rollout_starts(doom_play, 3, 5, 4)
    assert len(starts) == 4
    assert np.all(doom_play.episodes[starts - 3] == doom_play.episodes[starts + 4])
    r = rollout(model, doom_play, starts, 5, steps=2)
    assert r.psnr.shape == (4, 5) and r.frames.shape == (4, 5, 3, 16, 16)
    ours, copy = teacher_forced(model, doom_play, doom_play.windows(3)[:8], steps=2)
    assert copy > ours  # an untrained model is worse than copying the last frame
    with pytest.raises(ValueError, match="longer"):
        rollout_starts(doom_play, 3, 10_000, 4)


def test_action_sensitivity_tells_a_model_that_follows_actions_from_one_that_does_not(doom_play):
    """An 'oracle' that returns the real next frame for the action taken and the last frame
    otherwise scores 1; a model blind to actions scores 0 (ties never count)."""
    model = tiny_model().eval()
    n = model.cfg.context

    class Oracle(torch.nn.Module):
        cfg = model.cfg

        def predict(self, ctx, act, **kw):
            from minirepro.papers.gamengen import to_model

            out = ctx[:, -1].clone()
            for i in range(len(ctx)):
                idx = _lookup(ctx[i], act[i])
                if idx is not None:
                    out[i] = to_model(doom_play.frames[idx])
            return out

    def _lookup(ctx, act):
        from minirepro.papers.gamengen import to_model

        for t in doom_play.windows(n):
            if torch.equal(to_model(doom_play.frames[t - n : t]), ctx):
                return t if doom_play.actions[t - 1] == int(act[-1]) else None
        return None

    targets = doom_play.windows(n)[:60]
    frac, judged = action_sensitivity(Oracle(), doom_play, targets, min_change=0.01)
    assert judged > 5 and frac == 1.0
    blind_model = tiny_model(action_film=False).eval()  # cross-attention starts at zero
    blind, _ = action_sensitivity(blind_model, doom_play, targets, min_change=0.01)
    assert blind == 0.0
