"""v-prediction, DDIM against an analytic answer, and the context noise augmentation."""

import numpy as np
import pytest
import torch

from minirepro.papers.gamengen import NoiseAugmentation, NoiseSchedule, ddim_sample, make_batch
from minirepro.papers.gamengen.diffusion import ddim_timesteps

from .conftest import tiny_model


def test_v_parameterisation_round_trips():
    sched = NoiseSchedule(1000)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    t = torch.tensor([0, 10, 500, 900, 999])
    x_t = sched.add_noise(x0, t, eps)
    x0_hat, eps_hat = sched.x0_eps(x_t, t, sched.v_target(x0, t, eps))
    torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eps_hat, eps, atol=1e-4, rtol=1e-4)
    a, s = sched.alpha_sigma(t)
    torch.testing.assert_close(a**2 + s**2, torch.ones(5))


@pytest.mark.parametrize("mu, s", [(0.3, 0.5), (-1.0, 2.0)])
def test_ddim_1000_steps_of_the_exact_gaussian_model_is_the_analytic_flow(mu, s):
    """Data N(mu, s^2): the optimal x0-prediction is linear in x_t, and the probability-flow
    ODE maps x_T to mu + s (x_T - alpha_T mu) / sqrt(alpha_T^2 s^2 + sigma_T^2)."""
    sched = NoiseSchedule(1000)

    def predict_v(x, t):
        abar = sched.alphas_cumprod[t].reshape(-1, 1)  # float64
        a, sg = abar.sqrt(), (1 - abar).sqrt()
        x = x.double()
        x0 = mu + a * s**2 / (a**2 * s**2 + sg**2) * (x - a * mu)
        eps = (x - a * x0) / sg
        return (a * eps - sg * x0).float()

    x_T = torch.randn(256, 1, generator=torch.Generator().manual_seed(1))
    out = ddim_sample(predict_v, x_T, sched, 1000)
    aT = sched.alphas_cumprod[-1].sqrt().item()
    sT = (1 - sched.alphas_cumprod[-1]).sqrt().item()
    expected = mu + s * (x_T - aT * mu) / (aT**2 * s**2 + sT**2) ** 0.5
    torch.testing.assert_close(out, expected, atol=2e-3 * max(1, s), rtol=2e-3)
    # and with few steps it is only approximately right: the test can tell them apart
    few = ddim_sample(predict_v, x_T, sched, 2)
    assert (few - expected).abs().max() > 1e-2


def test_ddim_timesteps():
    assert ddim_timesteps(4, 1000) == [999, 749, 499, 249]
    assert ddim_timesteps(1000, 1000) == list(range(999, -1, -1))
    with pytest.raises(ValueError):
        ddim_timesteps(0, 1000)


def test_noise_buckets():
    aug = NoiseAugmentation(0.7, 10)
    sigma = torch.tensor([0.0, 0.069, 0.07, 0.35, 0.6999, 0.7])
    assert aug.bucket(sigma).tolist() == [0, 0, 1, 5, 9, 9]
    s = aug.sample(10_000, torch.Generator().manual_seed(0))
    assert 0 <= s.min() and s.max() <= 0.7
    counts = torch.bincount(aug.bucket(s), minlength=10)
    assert counts.min() > 800  # ~1000 each: uniform over the buckets


@pytest.mark.parametrize("residual", [False, True])
def test_augmentation_touches_the_context_never_the_target(doom_play, residual):
    """The frame the diffusion reconstructs is always the clean target; the augmentation
    noise is only in the context. Whole-frame diffusion: batches with and without
    augmentation from one generator have bit-identical noisy targets and v-targets."""
    targets = doom_play.windows(3)[:32]
    batches = {}
    for aug in (True, False):
        model = tiny_model(noise_aug=aug, context_dropout=0.0, residual=residual)
        g = torch.Generator().manual_seed(7)
        batches[aug] = make_batch(doom_play, targets, model.cfg, model.schedule, g)
    on, off = batches[True], batches[False]
    for key in ("t", "x0", "actions", "clean_context"):
        torch.testing.assert_close(on[key], off[key], rtol=0, atol=0)
    if not residual:
        for key in ("x_t", "v"):
            torch.testing.assert_close(on[key], off[key], rtol=0, atol=0)
    sched = tiny_model().schedule
    for batch in (on, off):
        # the target is x_t = alpha (x0 - base) + sigma eps with the diffusion noise only
        delta, _ = sched.x0_eps(batch["x_t"], batch["t"], batch["v"])
        torch.testing.assert_close(batch["base"] + delta, batch["x0"], atol=1e-5, rtol=0)
        expected_base = batch["context"][:, -1] if residual else torch.zeros_like(batch["x0"])
        torch.testing.assert_close(batch["base"], expected_base, rtol=0, atol=0)
    torch.testing.assert_close(off["context"], off["clean_context"], rtol=0, atol=0)
    assert off["bucket"].eq(0).all()
    noise = on["context"] - on["clean_context"]  # (B, N, 3, H, W)
    sigma = noise.flatten(1).std(1)
    assert (on["bucket"] > 0).float().mean() > 0.7
    # the bucket is that of the noise actually added
    est = NoiseAugmentation().bucket(sigma)
    assert (est - on["bucket"]).abs().max() <= 1


def test_context_dropout_zeroes_whole_contexts(doom_play):
    model = tiny_model(noise_aug=False, context_dropout=0.5)
    b = make_batch(doom_play, doom_play.windows(3)[:64], model.cfg, model.schedule,
                   torch.Generator().manual_seed(0))  # fmt: skip
    zero = b["context"].flatten(1).abs().sum(1) == 0
    assert 10 < zero.sum() < 54
    kept = ~zero
    torch.testing.assert_close(b["context"][kept], b["clean_context"][kept])
    assert np.all(b["x0"].abs().flatten(1).sum(1).numpy() > 0)  # the target is never dropped
