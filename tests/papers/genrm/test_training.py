"""The unified loss, verification data, and short training runs of every verifier."""

import random

import pytest
import torch
import torch.nn.functional as F

from minirepro.core.model import ModelConfig, Transformer
from minirepro.core.threads import num_threads
from minirepro.papers.genrm import (
    DiscriminativeRM,
    GenRM,
    GenRMCoT,
    LMConfig,
    WordFormat,
    pad_examples,
    sample_solutions,
    train_discriminative,
    train_generator,
    train_genrm,
    unified_loss,
    verification_data,
)
from minirepro.papers.genrm.formats import IGNORE
from minirepro.tasks.algorithmic import LastLetter, load_words

TINY = LMConfig(d_model=32, n_layer=1, n_head=2, steps=6, batch_size=8, max_seq_len=64)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with num_threads(1):  # tiny models: a second thread only adds contention
        yield


@pytest.fixture(scope="module")
def setup(one_thread):
    task = LastLetter(sorted(random.Random(0).sample(load_words(), 40)))
    fmt = WordFormat(task.words)
    problems = task.problems(24, (2, 3), seed=0)
    data = verification_data(task, fmt, problems, None, seed=0, p_slip=0.2)
    return task, fmt, problems, data


def test_examples_train_only_the_verdict_or_the_rationale(setup):
    task, fmt, problems, data = setup
    p, s = problems[0], task.solve(problems[0]).text
    ex = fmt.direct_example(p, s, True)
    assert [t for t in ex.targets if t != IGNORE] == [fmt.yes_id]
    assert ex.ids[-2] == fmt.ans_id and ex.targets[-1] == ex.ids[-1] == fmt.yes_id
    rat, _ = task.rationale(p, s)
    cot = fmt.cot_example(p, s, rat, False)
    trained = [t for t in cot.targets if t != IGNORE]
    assert trained == [*fmt.encode(rat), fmt.ans_id, fmt.no_id]


def test_verification_data_is_balanced_and_filters_wrong_verdicts(setup):
    _, _, _, data = setup
    labels = [x.correct for x in data.pairs]
    assert sum(labels) == len(labels) // 2 and len(data.direct) == len(data.pairs)
    kept = sum(x.rationale_ok for x in data.pairs)
    assert len(data.cot) == kept < len(data.pairs)  # p_slip=0.2 flips some verdicts


def test_unified_loss_is_verify_plus_lambda_times_sft(setup):
    _, fmt, _, data = setup
    torch.manual_seed(0)
    model = Transformer(TINY.model(fmt.vocab_size))
    xv, yv = pad_examples(data.direct[:4], fmt.pad_id)
    xs, ys = pad_examples(data.correct_solutions[:4], fmt.pad_id)

    def ce(x, y):
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE)

    torch.testing.assert_close(unified_loss(0.0)(model, (xv, yv)), ce(xv, yv))
    got = unified_loss(0.5)(model, (xv, yv, xs, ys))
    torch.testing.assert_close(got, ce(xv, yv) + 0.5 * ce(xs, ys))
    with pytest.raises(ValueError, match="lambda"):
        unified_loss(-1.0)


def test_every_verifier_trains_and_scores(setup):
    task, fmt, problems, data = setup
    gen, hist = train_generator(data.correct_solutions, fmt.vocab_size, fmt.pad_id, TINY, seed=0)
    assert hist[-1]["loss"] < hist[0]["loss"] or len(hist) == 1
    samples = sample_solutions(gen, fmt, problems[:3], 4, max_new_tokens=12, seed=1)
    assert len(samples) == 3 and all(len(r) == 4 for r in samples)
    assert sample_solutions(gen, fmt, problems[:3], 4, max_new_tokens=12, seed=1) == samples
    pairs = [(p, s) for p, row in zip(problems[:3], samples) for s in row]
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    for lam in (0.0, 1.0):
        v, _ = train_genrm(gen, data.direct, data.correct_solutions, lam, fmt.pad_id, TINY, 0)
        assert not torch.equal(v.embed.weight, gen.embed.weight)  # a trained copy
        s = GenRM(v, fmt).score(pairs)
        assert s.shape == (12,) and bool(((s >= 0) & (s <= 1)).all())
    assert all(torch.equal(before[k], gen.state_dict()[k]) for k in before)  # base untouched
    cot_model, _ = train_genrm(gen, data.cot, data.correct_solutions, 1.0, fmt.pad_id, TINY, 0)
    per = GenRMCoT(cot_model, fmt, max_rationale=10).scores_per_rationale(pairs, 3, seed=2)
    assert per.shape == (12, 3)
    torch.testing.assert_close(
        GenRMCoT(cot_model, fmt, max_rationale=10).score(pairs, 3, seed=2), per.mean(1)
    )
    inputs = [fmt.direct_ids(x.problem, x.solution) for x in data.pairs]
    disc, _ = train_discriminative(
        gen, inputs, [x.correct for x in data.pairs], fmt.pad_id, TINY, 0
    )
    d = DiscriminativeRM(disc, fmt).score(pairs)
    ref = torch.sigmoid(disc(torch.tensor([fmt.direct_ids(*pairs[0])]))[0, -1])
    torch.testing.assert_close(d[0], ref.detach())


def test_training_rejects_bad_input(setup):
    _, fmt, _, data = setup
    torch.manual_seed(0)
    base = Transformer(ModelConfig(vocab_size=fmt.vocab_size, n_layer=1, n_head=2, d_model=16))
    with pytest.raises(ValueError, match="correct-solution"):
        train_genrm(base, data.direct, [], 1.0, fmt.pad_id, TINY, 0)
    with pytest.raises(ValueError, match="aligned"):
        train_discriminative(base, [[1, 2]], [True, False], fmt.pad_id, TINY, 0)
    with pytest.raises(ValueError, match="no training examples"):
        pad_examples([], 0)
