"""pixel_shuffle and the MLP projector against transformers' InternVL on the same weights."""

import pytest
import torch

from minirepro.papers.internvl import MLPProjector, pixel_shuffle

internvl = pytest.importorskip("transformers.models.internvl.modeling_internvl")
from transformers import InternVLConfig  # noqa: E402


@pytest.mark.parametrize("shape", [(2, 8, 8, 5), (1, 4, 6, 3), (3, 16, 16, 8), (1, 2, 2, 1)])
def test_pixel_shuffle_equals_transformers(shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    ref = internvl.InternVLModel.pixel_shuffle(None, x, scale_factor=0.5)
    ours = pixel_shuffle(x, 0.5)
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ref)
    (gr,) = torch.autograd.grad(ref, x, g)
    (go,) = torch.autograd.grad(ours, x, g)
    torch.testing.assert_close(go, gr)


def test_pixel_shuffle_blocks_and_v1():
    x = torch.arange(16.0).reshape(1, 4, 4, 1)
    out = pixel_shuffle(x, 0.5)
    assert out.shape == (1, 2, 2, 4)
    assert out[0, 0, 1].tolist() == [2.0, 3.0, 6.0, 7.0]  # the top-right 2x2 block
    torch.testing.assert_close(pixel_shuffle(x, 0.5, "v1"), out.transpose(1, 2))
    torch.testing.assert_close(pixel_shuffle(x, 1.0), x)
    assert pixel_shuffle(torch.randn(2, 8, 8, 3), 0.25).shape == (2, 2, 2, 48)


@pytest.mark.parametrize(
    "x,kw,match",
    [
        (torch.randn(1, 5, 4, 2), {}, "divisible"),
        (torch.randn(4, 4, 2), {}, r"\(B, H, W, C\)"),
        (torch.randn(1, 4, 4, 2), {"scale_factor": 0.3}, "1/r"),
        (torch.randn(1, 4, 4, 2), {"version": "v3"}, "version"),
    ],
)
def test_pixel_shuffle_errors(x, kw, match):
    with pytest.raises(ValueError, match=match):
        pixel_shuffle(x, **kw)


def test_projector_equals_transformers():
    torch.manual_seed(0)
    cfg = InternVLConfig(
        vision_config={"hidden_size": 12}, text_config={"model_type": "qwen2", "hidden_size": 20},
        downsample_ratio=0.5,
    )  # fmt: skip
    ref = internvl.InternVLMultiModalProjector(cfg).double()
    ours = MLPProjector(48, 20).double()
    for p in ref.parameters():  # non-trivial LayerNorm weights too
        torch.nn.init.normal_(p)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 7, 48, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(ours(x), ref(x))
    g = torch.randn(3, 7, 20, dtype=torch.float64)
    gx_ref = torch.autograd.grad(ref(x), [x, *ref.parameters()], g)
    gx_ours = torch.autograd.grad(ours(x), [x, *ours.parameters()], g)
    for a, b in zip(gx_ours, gx_ref):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="48 channels"):
        ours(torch.randn(2, 47, dtype=torch.float64))
