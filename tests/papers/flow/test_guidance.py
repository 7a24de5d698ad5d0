"""Classifier-free guidance: weights 0 and 1 are the unconditional and conditional models."""

import torch

from minirepro.papers.flow import GuidedPosterior, GuidedVelocity, ODESolver
from minirepro.papers.flow.models import PosteriorMLP, VelocityMLP


def test_guided_velocity_weights():
    torch.manual_seed(0)
    model = VelocityMLP(4, width=32, depth=2, n_classes=3)
    x, t, y = torch.randn(8, 4), torch.rand(8), torch.randint(0, 3, (8,))
    null = torch.full_like(y, model.null_label)
    u_null, u_cond = model(x, t, y=null), model(x, t, y=y)
    torch.testing.assert_close(GuidedVelocity(model, 0.0, model.null_label)(x, t, y), u_null)
    torch.testing.assert_close(GuidedVelocity(model, 1.0, model.null_label)(x, t, y), u_cond)
    # the batched two-branch path, at a weight where it is used
    torch.testing.assert_close(
        GuidedVelocity(model, 2.5, model.null_label)(x, t, y), -1.5 * u_null + 2.5 * u_cond
    )
    torch.testing.assert_close(
        GuidedVelocity(model, 1.0 + 1e-9, model.null_label)(x, t, y), u_cond, rtol=1e-5, atol=1e-5
    )


def test_guided_sampling_at_weight_one_is_conditional_sampling():
    torch.manual_seed(1)
    model = VelocityMLP(2, width=16, depth=2, n_classes=2)
    x0, y = torch.randn(10, 2), torch.tensor([0, 1] * 5)
    a = ODESolver(GuidedVelocity(model, 1.0, model.null_label)).sample(x0, n_steps=5, y=y)
    b = ODESolver(model).sample(x0, n_steps=5, y=y)
    torch.testing.assert_close(a, b)
    c = ODESolver(GuidedVelocity(model, 0.0, model.null_label)).sample(x0, n_steps=5, y=y)
    d = ODESolver(model).sample(x0, n_steps=5)  # y=None is the null label
    torch.testing.assert_close(c, d)


def test_guided_posterior_weights():
    torch.manual_seed(2)
    model = PosteriorMLP(3, 5, width=32, depth=2, n_classes=4)
    x, t, y = torch.randint(0, 5, (6, 3)), torch.rand(6), torch.randint(0, 4, (6,))
    p_null = torch.softmax(model(x, t, y=torch.full_like(y, 4)), -1)
    p_cond = torch.softmax(model(x, t, y=y), -1)
    for w, expected in [(0.0, p_null), (1.0, p_cond)]:
        got = torch.softmax(GuidedPosterior(model, w, model.null_label)(x, t, y), -1)
        torch.testing.assert_close(got, expected)
    got = torch.softmax(GuidedPosterior(model, 1.0 + 1e-9, model.null_label)(x, t, y), -1)
    torch.testing.assert_close(got, p_cond, rtol=1e-5, atol=1e-5)
    # w = 3: proportional to p_null^-2 p_cond^3
    got = torch.softmax(GuidedPosterior(model, 3.0, model.null_label)(x, t, y), -1)
    expected = p_null**-2 * p_cond**3
    torch.testing.assert_close(got, expected / expected.sum(-1, keepdim=True))
