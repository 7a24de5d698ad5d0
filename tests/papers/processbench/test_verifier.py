"""Step verifiers: encoding, targets, training on a learnable toy, save/load."""

import random

import pytest
import torch

from minirepro.papers.processbench import (
    Record,
    Verifier,
    VerifierConfig,
    build_tokenizer,
    encode_record,
    score,
    step_targets,
    train_verifier,
)
from minirepro.papers.processbench.verifier import STEP


def _toy(n: int, seed: int) -> list[Record]:
    """Steps are "ok <digit>"; an error step says "bad <digit>" (a word a model can spot)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randint(2, 5)
        label = rng.choice([-1, rng.randrange(k)])
        steps = [f"{'bad' if j == label else 'ok'} {rng.randrange(10)} ." for j in range(k)]
        out.append(Record(f"toy-{i}", "check these steps", tuple(steps), label, label == -1))
    return out


def test_encoding_marks_each_step():
    recs = _toy(5, 0)
    tok = build_tokenizer(recs)
    for r in recs:
        ids, pos = encode_record(tok, r)
        assert len(pos) == len(r.steps)
        assert all(ids[p] == tok.token_to_id(STEP) for p in pos)
        assert pos == sorted(pos) and pos[-1] == len(ids) - 1


def test_step_targets():
    r = Record("a-0", "p", ("x", "y", "z", "w"), 1, True)
    assert step_targets(r, "process") == [1.0, 0.0, -100.0, -100.0]
    assert step_targets(r, "outcome") == [1.0] * 4
    good = Record("a-1", "p", ("x", "y"), -1, True)
    assert step_targets(good, "process") == [1.0, 1.0]
    with pytest.raises(ValueError, match="supervision"):
        step_targets(r, "magic")


def test_prm_learns_a_visible_error_and_roundtrips(tmp_path):
    torch.set_num_threads(1)  # far less time lost to busy cores (reset per test)
    train, test = _toy(300, 1), _toy(60, 2)
    cfg = VerifierConfig(d_model=32, n_layer=1, n_head=2, steps=80, batch_size=16, lr=1e-2,
                         warmup_steps=5, precision="fp32")  # fmt: skip
    v, history = train_verifier(train, "process", cfg, seed=0)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    v.calibrate(train[:100])
    assert score(test, v.predict(test)).average_f1 > 0.9
    v2 = Verifier.load(v.save(tmp_path / "prm"))
    assert v2.threshold == v.threshold and v2.supervision == "process"
    torch.testing.assert_close(
        torch.tensor(v2.step_scores(test[:5])[0]), torch.tensor(v.step_scores(test[:5])[0])
    )
    with pytest.raises(FileNotFoundError, match="not a saved verifier"):
        Verifier.load(tmp_path)
    with pytest.raises(ValueError, match="no threshold"):
        Verifier(v.model, v.tokenizer, "process").predict(test)
