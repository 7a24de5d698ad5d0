"""Distillation stages, teacher records, save/load, and the smoke reproduction."""

import pytest
import torch
from torch.testing import assert_close

from minirepro.core.generate import generate
from minirepro.core.model import ModelConfig, Transformer
from minirepro.papers.hybrid import (
    DistillConfig,
    distill,
    evaluate_student,
    load_hybrid,
    record_teacher,
    save_hybrid,
    teacher_text,
    to_hybrid,
)


@pytest.fixture(scope="module")
def teacher_and_data():
    torch.manual_seed(0)
    teacher = Transformer(
        ModelConfig(vocab_size=48, n_layer=4, d_model=32, n_head=4, n_kv_head=2, init_std=0.1)
    ).eval()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 48, (5,), generator=g).tolist() for _ in range(12)]
    ids = teacher_text(teacher, prompts, 19, seed=0)
    return teacher, ids


def test_record_reproduces_the_teacher(teacher_and_data):
    teacher, ids = teacher_and_data
    assert ids.shape == (12, 24)
    rec = record_teacher(teacher, ids, 2)
    with torch.no_grad():
        assert_close(teacher.lm_head(rec.final), teacher(ids), atol=1e-5, rtol=1e-4)
    same = evaluate_student(teacher, rec)  # no layer replaced: the student is the teacher
    assert same["kl"] < 1e-6 and same["agreement"] == 1.0


def test_distill_lowers_kl_and_trains_only_mamba_layers(teacher_and_data):
    teacher, ids = teacher_and_data
    rec, ev = record_teacher(teacher, ids[:9], 2), record_teacher(teacher, ids[9:], 2)
    hybrid = to_hybrid(teacher, [2], seed=0)
    before = {k: v.clone() for k, v in hybrid.state_dict().items()}
    kl0 = evaluate_student(hybrid, ev)["kl"]
    hist = distill(
        hybrid,
        rec,
        DistillConfig(stage1_steps=15, stage2_steps=25, batch_size=4, lr1=3e-3, lr2=3e-3),
    )
    kl1 = evaluate_student(hybrid, ev)["kl"]
    assert hist["stage1"][-1] < hist["stage1"][0]
    assert kl1 < 0.7 * kl0, (kl0, kl1)
    after = hybrid.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]) != k.startswith("layers.2.mixer."), k
    with pytest.raises(ValueError, match="at or above"):
        distill(to_hybrid(teacher, [0], seed=0), rec, DistillConfig(stage1_steps=1, stage2_steps=0))


def test_save_load_and_served_model_decode_with_state_cache(tmp_path, teacher_and_data):
    from minirepro.papers.serve.served_model import load_checkpoint_model

    teacher, _ = teacher_and_data
    hybrid = to_hybrid(teacher, [0, 2], seed=0).eval()
    save_hybrid(hybrid, tmp_path / "h")
    prompt = [1, 2, 3, 4]
    want = generate(hybrid, prompt, max_new_tokens=12)[0]
    assert generate(load_hybrid(tmp_path / "h"), prompt, max_new_tokens=12)[0] == want
    served = load_checkpoint_model(tmp_path / "h")
    assert served.model.cfg.mixer[0] == "mamba2"
    assert generate(served.model, prompt, max_new_tokens=12)[0] == want
    (tmp_path / "bad").mkdir()
    with pytest.raises(FileNotFoundError, match="not a save_hybrid folder"):
        load_hybrid(tmp_path / "bad")


def test_smoke_reproduction_checks_every_claim(tmp_path):
    from minirepro.core.results import RunDir
    from minirepro.papers.hybrid import PRESETS, run

    cfg = PRESETS["smoke"]
    results = run(cfg, RunDir("hybrid", cfg, root=tmp_path, preset="smoke"))
    assert len(results) == 6
    spec = [r for r in results if "token-identical" in r.claim][0]
    assert spec.verdict == "pass"
    passes = [r for r in results if "fewer target forward passes" in r.claim][0]
    assert passes.measured > 1.2  # an int8 copy of the target is accepted most of the time
    kl = results[0]
    assert kl.measured > 1.0  # distillation lowers the KL to the teacher
