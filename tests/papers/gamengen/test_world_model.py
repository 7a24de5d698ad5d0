"""The U-Net world model: shapes, conditioning, training, sampling, file format."""

import pytest
import torch

from minirepro.core.train import TrainConfig
from minirepro.papers.gamengen import WorldModel, to_model, to_uint8, train_world_model, v_loss
from minirepro.papers.gamengen.world_model import make_batch

from .conftest import tiny_model


def _inputs(model, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c, s = model.cfg.context, model.cfg.frame_size
    return (
        torch.randn(b, 3, s, s, generator=g),
        torch.randn(b, c, 3, s, s, generator=g),
        torch.randint(0, model.cfg.T, (b,), generator=g),
        torch.randint(0, 10, (b,), generator=g),
        torch.randint(0, model.cfg.n_actions, (b, c), generator=g),
    )


def test_every_conditioning_input_changes_the_output():
    torch.manual_seed(0)
    model = tiny_model()
    for p in model.parameters():  # leave the zero-initialised layers' identity start
        torch.nn.init.normal_(p, std=0.1)
    x, ctx, t, bucket, act = _inputs(model)
    base = model(x, ctx, t, bucket, act)
    assert base.shape == x.shape
    for i, changed in enumerate(
        [(x, ctx + 0.5, t, bucket, act), (x, ctx, t + 7, bucket, act),
         (x, ctx, t, (bucket + 1) % 10, act), (x, ctx, t, bucket, (act + 1) % 4)]
    ):  # fmt: skip
        assert (model(*changed) - base).abs().max() > 1e-4, i


def test_bad_shapes_name_the_problem():
    model = tiny_model()
    x, ctx, t, bucket, act = _inputs(model)
    with pytest.raises(ValueError, match="context"):
        model(x, ctx[:, :2], t, bucket, act[:, :2])
    with pytest.raises(ValueError, match="divisible"):
        tiny_model().cfg.__class__(frame_size=18, channels=(16, 16, 16))
    with pytest.raises(ValueError, match="uint8"):
        to_model(torch.zeros(2, 4, 4, 3))


def test_training_lowers_the_loss_and_trains_every_parameter(doom_play):
    torch.manual_seed(0)
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    fixed = make_batch(doom_play, doom_play.windows(3)[:32], model.cfg, model.schedule, g)
    start = v_loss(model, fixed).item()
    cfg = TrainConfig(steps=20, lr=5e-3, batch_size=8, warmup_steps=2, log_every=10, weight_decay=0)
    train_world_model(model, doom_play, cfg)
    assert v_loss(model, fixed).item() < 0.8 * start
    frozen = [k for k, v in model.state_dict().items() if torch.equal(v, before[k])]
    assert frozen == [], frozen


def test_predict_is_seeded_and_in_range():
    model = tiny_model().eval()
    _, ctx, _, _, act = _inputs(model, b=3)
    ctx = ctx.clamp(-1, 1)
    a = model.predict(ctx, act, steps=4, generator=torch.Generator().manual_seed(1))
    b = model.predict(ctx, act, steps=4, generator=torch.Generator().manual_seed(1))
    c = model.predict(ctx, act, steps=4, context_sigma=0.3, guidance=1.5,
                      generator=torch.Generator().manual_seed(2))  # fmt: skip
    torch.testing.assert_close(a, b)
    assert a.shape == (3, 3, 16, 16) and a.abs().max() <= 1 and not torch.equal(a, c)
    assert to_uint8(a).shape == (3, 16, 16, 3)
    with pytest.raises(ValueError, match="context_sigma"):
        model.predict(ctx, act, context_sigma=0.9)


def test_save_load_round_trip(tmp_path):
    model = tiny_model().eval()
    path = model.save(tmp_path / "m.safetensors", extra={"start_actions": torch.arange(3)})
    back, extra = WorldModel.load(path)
    assert back.cfg == model.cfg
    inputs = _inputs(model)
    torch.testing.assert_close(back(*inputs), model(*inputs))
    assert extra["start_actions"].tolist() == [0, 1, 2]
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a safetensors"):
        WorldModel.load(junk)
    with pytest.raises(FileNotFoundError):
        WorldModel.load(tmp_path / "none.safetensors")


def test_load_names_weights_that_do_not_fit_the_config(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = tiny_model().save(tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    del tensors["model.unet.action_emb.weight"]
    save_file(tensors, str(tmp_path / "cut.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="do not fit"):
        WorldModel.load(tmp_path / "cut.safetensors")
