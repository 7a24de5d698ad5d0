"""p(Yes): read at the instruction's position, normalised as specified, and independent of
batching and of padding side -- for the core decoder and for HF's LlamaForCausalLM."""

import pytest
import torch

from minirepro.core.hf_llama import to_hf
from minirepro.core.model import ModelConfig, Transformer
from minirepro.papers.genrm import GenRM, WordFormat, last_logits, p_yes, yes_scores
from minirepro.tasks.algorithmic import LastLetter

V, YES, NO = 40, 7, 9


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(
        ModelConfig(vocab_size=V, n_layer=2, n_head=4, d_model=32, max_seq_len=64)
    ).eval()


def _seqs(seed=1, n=7):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 20, (n,), generator=g).tolist()
    return [torch.randint(1, V, (s,), generator=g).tolist() for s in lengths]


def _reference(model, seqs):
    """One unpadded forward per sequence; the logits at its last token."""
    with torch.no_grad():
        return torch.stack([model(torch.tensor([s]))[0, -1] for s in seqs])


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_last_logits_match_unpadded_forward(model, padding, batch_size):
    seqs = _seqs()
    got = last_logits(model, seqs, padding=padding, batch_size=batch_size)
    torch.testing.assert_close(got, _reference(model, seqs), atol=1e-5, rtol=1e-5)


def test_score_is_read_at_the_last_token_not_before(model):
    seqs = _seqs(n=3)
    ref = _reference(model, seqs).softmax(-1)[:, YES]
    got = yes_scores(model, seqs, YES, NO)
    torch.testing.assert_close(got, ref)
    one_early = yes_scores(model, [s[:-1] for s in seqs if len(s) > 1], YES, NO)
    assert not torch.allclose(one_early, got[[i for i, s in enumerate(seqs) if len(s) > 1]])


def test_hf_causal_lm_scores_equal_the_core_decoder(model):
    hf = to_hf(model).eval()
    seqs = _seqs(seed=3)
    ref = yes_scores(model, seqs, YES, NO)
    for padding in ("right", "left"):
        got = yes_scores(hf, seqs, YES, NO, padding=padding, batch_size=4)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_normalisations():
    logits = torch.randn(5, V)
    full = logits.softmax(-1)
    torch.testing.assert_close(p_yes(logits, YES, NO), full[:, YES])
    pair = p_yes(logits, YES, NO, "yes_no")
    torch.testing.assert_close(pair, full[:, YES] / (full[:, YES] + full[:, NO]))
    torch.testing.assert_close(pair + p_yes(logits, NO, YES, "yes_no"), torch.ones(5))
    assert bool((p_yes(logits, YES, NO) < pair).all())  # the full softmax spreads mass


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"yes_id": V, "no_id": 1}, "distinct ids"),
        ({"yes_id": 3, "no_id": 3}, "distinct ids"),
        ({"yes_id": 3, "no_id": 4, "normalize": "sigmoid"}, "normalize"),
    ],
)
def test_p_yes_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        p_yes(torch.randn(2, V), **kwargs)


def test_last_logits_rejects_bad_input(model):
    with pytest.raises(ValueError, match="padding"):
        last_logits(model, [[1, 2]], padding="middle")
    with pytest.raises(ValueError, match="at least one token"):
        last_logits(model, [[1, 2], []])


def test_genrm_scores_pairs_through_its_format():
    task = LastLetter(["cat", "dog", "bird", "fish", "owl", "ant", "bee", "cow", "elk", "fox"])
    fmt = WordFormat(task.words)
    torch.manual_seed(0)
    lm = Transformer(ModelConfig(vocab_size=fmt.vocab_size, n_layer=1, n_head=2, d_model=16)).eval()
    problems = task.problems(5, (2, 4), seed=0)
    pairs = [(p, task.solve(p).text) for p in problems]
    right = GenRM(lm, fmt).score(pairs)
    left = GenRM(lm, fmt, padding="left", batch_size=2).score(pairs)
    torch.testing.assert_close(left, right, atol=1e-6, rtol=1e-5)
    ids = fmt.direct_ids(*pairs[0])
    assert ids[-1] == fmt.ans_id  # the score is read at I
    ref = lm(torch.tensor([ids]))[0, -1].softmax(-1)[fmt.yes_id]
    torch.testing.assert_close(right[0], ref.detach())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        fmt.direct_ids(problems[0], "zebra : a = a")
