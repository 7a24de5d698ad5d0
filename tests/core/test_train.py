import importlib.util
import json
import math
import os
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close

from minirepro.core.train import (
    TrainConfig,
    latest_checkpoint,
    lm_loss,
    lr_at,
    make_optimizer,
    seed_everything,
    shard_batch,
    train,
)

WORKER = Path(__file__).with_name("ddp_worker.py")
_spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)
VOCAB = worker.VOCAB


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def next_token_batch(batch_size: int, seq_len: int = 6):
    """Predict (token + 1) mod V: learnable by embedding + linear."""

    def get_batch(step, g):
        x = torch.randint(0, VOCAB, (batch_size, seq_len), generator=g)  # (B, S)
        return x, (x + 1) % VOCAB

    return get_batch


def test_lr_schedule():
    cfg = TrainConfig(steps=101, lr=2.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(i, cfg) for i in range(cfg.steps)]
    assert lrs[:10] == pytest.approx([2.0 * (i + 1) / 10 for i in range(10)])  # linear warmup
    assert lrs[10] == pytest.approx(2.0)
    assert lrs[55] == pytest.approx(0.2 + 0.5 * 1.8)  # cosine midpoint
    assert lrs[-1] == pytest.approx(0.2) and lr_at(500, cfg) == pytest.approx(0.2)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # monotone after warmup
    no_warmup = TrainConfig(steps=5, lr=1.0, warmup_steps=0, min_lr_ratio=0.0)
    assert [lr_at(i, no_warmup) for i in (0, 2, 4)] == pytest.approx([1.0, 0.5, 0.0])


def test_loss_falls():
    seed_everything(0)
    cfg = TrainConfig(steps=60, lr=3e-2, warmup_steps=5, batch_size=16, log_every=1)
    losses = [r["loss"] for r in train(worker.TinyLM(), cfg, next_token_batch(16)).history]
    assert len(losses) == 60
    assert losses[0] > math.log(VOCAB) - 0.7
    assert sum(losses[-5:]) / 5 < 0.3 * losses[0]


@pytest.mark.parametrize("grad_clip", [0.05, None])
def test_grad_clip_bounds_the_norm_used(grad_clip):
    cfg = TrainConfig(steps=3, warmup_steps=0, batch_size=8, log_every=1, grad_clip=grad_clip)
    big_loss = lambda model, batch: 100.0 * lm_loss(model, batch)
    state = train(worker.make_model(), cfg, next_token_batch(8), loss_fn=big_loss)
    used = torch.nn.utils.get_total_norm([p.grad for p in state.model.parameters()])
    logged = state.history[-1]["grad_norm"]  # before clipping
    if grad_clip is None:
        assert used.item() == pytest.approx(logged, rel=1e-6)
    else:
        assert logged > 10 * grad_clip
        assert used.item() == pytest.approx(grad_clip, rel=1e-5)


def test_weight_decay_only_on_matrices():
    model = worker.make_model()
    cfg = TrainConfig(steps=5, lr=0.1, weight_decay=0.5, warmup_steps=2, batch_size=4)
    decay, no_decay = make_optimizer(model, cfg).param_groups
    assert decay["weight_decay"] == 0.5 and no_decay["weight_decay"] == 0.0
    assert {p.ndim for p in decay["params"]} == {2} and {p.ndim for p in no_decay["params"]} == {1}

    # With zero gradients AdamW's only update is the decoupled decay p <- p * (1 - lr * wd).
    before = {k: v.clone() for k, v in model.named_parameters()}
    zero_loss = lambda m, batch: sum((p * 0).sum() for p in m.parameters())
    train(model, cfg, next_token_batch(4), loss_fn=zero_loss)
    shrink = math.prod(1 - lr_at(i, cfg) * cfg.weight_decay for i in range(cfg.steps))
    for name, p in model.named_parameters():
        expected = before[name] * shrink if p.ndim >= 2 else before[name]
        assert_close(p.detach(), expected, rtol=1e-6, atol=0, msg=name)
    assert model.norm.weight.ndim == 1 and torch.equal(model.norm.weight, before["norm.weight"])


def test_metrics_eval_and_checkpoint_files(tmp_path):
    cfg = TrainConfig(steps=7, warmup_steps=2, batch_size=4, log_every=2, eval_every=3)
    evals, steps_seen = [], []

    def eval_fn(model, step):
        assert not model.training
        evals.append(step)
        return {"val_loss": 1.0 / step}

    state = train(
        worker.make_model(), cfg, next_token_batch(4), eval_fn=eval_fn, out_dir=tmp_path,
        on_step=lambda step, metrics: steps_seen.append(step),
    )  # fmt: skip
    assert evals == [3, 6, 7] and steps_seen == list(range(1, 8)) and state.step == 7
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records == state.history
    assert [r["step"] for r in records] == [2, 3, 4, 6, 7]
    train_keys = {"step", "loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s"}
    for r in records:
        assert set(r) == train_keys | ({"val_loss"} if r["step"] in evals else set())
        assert r["lr"] == pytest.approx(lr_at(r["step"] - 1, cfg))
    ckpt = latest_checkpoint(tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000007"]
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "state.pt"}


def test_resume_equals_uninterrupted(tmp_path):
    # Dropout makes the result depend on the RNG state, which the checkpoint must restore.
    cfg = TrainConfig(steps=10, lr=1e-2, warmup_steps=3, batch_size=8, log_every=1, ckpt_every=5)
    get_batch = next_token_batch(8)
    straight = train(worker.make_model(dropout=0.2), cfg, get_batch, out_dir=tmp_path / "a")

    def crash_at_7(step, metrics):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            worker.make_model(dropout=0.2),
            cfg,
            get_batch,
            out_dir=tmp_path / "b",
            on_step=crash_at_7,
        )
    assert latest_checkpoint(tmp_path / "b").name == "step_00000005"
    # A fresh process builds its model from another seed; the checkpoint overrides it.
    resumed = train(
        worker.make_model(seed=123, dropout=0.2), cfg, get_batch, out_dir=tmp_path / "b"
    )

    assert resumed.step == 10
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values()
    ):
        assert_close(b, a, rtol=1e-7, atol=1e-9, msg=name)
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 11))  # 6, 7 not twice
    losses = lambda history: [r["loss"] for r in history]
    assert losses(resumed.history) == pytest.approx(losses(straight.history), rel=1e-6)

    again = train(worker.make_model(seed=5), cfg, get_batch, out_dir=tmp_path / "b")  # done
    assert again.step == 10 and len(again.history) == 10
    restart = TrainConfig(**{**vars(cfg), "steps": 2})
    fresh = train(worker.make_model(), restart, get_batch, out_dir=tmp_path / "b", resume=False)
    assert len(fresh.history) == 2 and latest_checkpoint(tmp_path / "b").name == "step_00000002"


def test_shard_batch_structures():
    Pair = namedtuple("Pair", "x y")
    batch = {"pair": Pair(torch.arange(8), torch.rand(8, 3)), "ids": [torch.rand(8, 2, 2)], "n": 3}
    shards = [shard_batch(batch, r, 4) for r in range(4)]
    assert isinstance(shards[0]["pair"], Pair) and shards[0]["n"] == 3
    assert shards[1]["pair"].x.tolist() == [2, 3]
    assert_close(torch.cat([s["ids"][0] for s in shards]), batch["ids"][0])
    with pytest.raises(ValueError, match="divisible"):
        shard_batch(torch.rand(6, 2), 0, 4)


def test_batch_size_must_divide_world_size(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    cfg = TrainConfig(steps=1, batch_size=7)
    with pytest.raises(ValueError, match="batch_size=7 .* divisible by the world size 2"):
        train(worker.make_model(), cfg, next_token_batch(7))


def test_ddp_matches_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(WORKER), str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = json.loads((tmp_path / "result.json").read_text())
    assert ddp["world_size"] == 2 and ddp["shard_sizes"] == [worker.CFG.batch_size // 2]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == worker.CFG.steps  # rank 0 alone writes

    single = train(worker.make_model(), worker.CFG, worker.get_batch, loss_fn=worker.dict_loss)
    losses = [r["loss"] for r in single.history]
    assert len(losses) == len(ddp["losses"]) == 8
    assert ddp["losses"] == pytest.approx(losses, rel=1e-5)
    assert losses[-1] < losses[0]
    ddp_params = load_file(str(tmp_path / "params.safetensors"))
    for name, p in single.model.state_dict().items():
        assert_close(ddp_params[name], p, rtol=1e-5, atol=1e-6, msg=name)
