"""The multi-pass continuous-thought forward against the naive full recomputation, for the
core decoder and HF Llama through the same code path."""

import pytest
import torch

from minirepro.core.hf_llama import to_hf
from minirepro.core.model import ModelConfig, Transformer
from minirepro.papers.coconut import Coconut, left_pad, naive_latent_forward

LATENT = 5


def _core(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=40, n_layer=2, n_head=4, n_kv_head=2, d_model=32)
    return Transformer(cfg)


@pytest.fixture(scope="module", params=["core", "hf"])
def net(request):
    core = _core()
    return Coconut(core if request.param == "core" else to_hf(core), latent_id=LATENT)


def _batch(n_latent, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows, align = [], []
    for q_len, tail in [(7, 5), (3, 9), (5, 2)]:  # odd lengths, so rows need padding
        q = torch.randint(6, 40, (q_len,), generator=g).tolist()
        t = torch.randint(6, 40, (tail,), generator=g).tolist()
        rows.append([*q, 3, *[LATENT] * n_latent, 4, *t])
        align.append(q_len + 1)
    return left_pad(rows, align)


@pytest.mark.parametrize("n_latent", [0, 1, 4])
def test_multipass_equals_naive_recompute(net, n_latent):
    ids, docs = _batch(n_latent)
    logits, hidden = net(ids, docs, return_hidden=True)
    ref_logits, ref_hidden = naive_latent_forward(net, ids, docs)
    real = docs.bool()  # padding outputs are never read
    torch.testing.assert_close(logits[real], ref_logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden[real], ref_hidden[real], atol=1e-5, rtol=1e-5)


def test_rows_with_different_numbers_of_thoughts_equal_each_row_alone(net):
    """uniform_prob mixes stages in one batch: rows hold 0, 1 or 3 latents."""
    g = torch.Generator().manual_seed(4)
    rows, align = [], []
    for q_len, n_latent, tail in [(6, 3, 4), (3, 1, 6), (5, 0, 3)]:
        q = torch.randint(6, 40, (q_len,), generator=g).tolist()
        t = torch.randint(6, 40, (tail,), generator=g).tolist()
        rows.append([*q, 3, *[LATENT] * n_latent, 4, *t])
        align.append(q_len + 1)
    ids, docs = left_pad(rows, align)
    logits = net(ids, docs)
    ref = naive_latent_forward(net, ids, docs)[0]
    real = docs.bool()
    torch.testing.assert_close(logits[real], ref[real], atol=1e-5, rtol=1e-5)
    for i, r in enumerate(rows):  # and each row run on its own, without padding
        alone = net(torch.tensor([r]))[0]
        torch.testing.assert_close(logits[i][real[i]], alone, atol=1e-5, rtol=1e-5)


def test_gradients_equal_naive_and_flow_through_recycled_states(net):
    ids, docs = _batch(3, seed=1)
    real = docs.bool()
    weights = torch.randn(real.sum(), net.lm.vocab_size, generator=torch.Generator().manual_seed(2))
    params = [p for p in net.parameters() if p.requires_grad]

    def grads(logits):
        g = torch.autograd.grad((logits[real] * weights).sum(), params, allow_unused=True)
        return torch.cat([x.flatten() for x in g if x is not None])

    ours = grads(net(ids, docs))
    naive = grads(naive_latent_forward(net, ids, docs)[0])
    cut = grads(naive_latent_forward(net, ids, docs, detach=True)[0])
    torch.testing.assert_close(ours, naive, atol=1e-5, rtol=1e-4)
    # without the path through the thoughts the gradient is clearly different
    assert (ours - cut).norm() > 1e-3 * ours.norm()


def test_core_and_hf_agree():
    core = _core(3)
    ids, docs = _batch(2, seed=3)
    a = Coconut(core, LATENT)(ids, docs)
    b = Coconut(to_hf(core), LATENT)(ids, docs)
    real = docs.bool()
    torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)


def test_generate_with_cache_equals_greedy_recompute(net):
    prompts = [[9, 10, 11, 3, LATENT, LATENT, 4], [20, 3, LATENT, LATENT, 4]]
    out = net.generate(prompts, max_new_tokens=6)
    for p, got in zip(prompts, out):
        seq = list(p)
        for _ in range(6):
            logits, _ = naive_latent_forward(net, torch.tensor([seq]))
            seq.append(int(logits[0, -1].argmax()))
        assert got == seq[len(p) :]


def test_pause_as_thought_is_one_plain_pass():
    core = _core()
    ids, docs = _batch(3)
    pause = Coconut(core, LATENT, recycle=False)(ids, docs)
    plain = core(ids, document_ids=docs)
    real = docs.bool()
    torch.testing.assert_close(pause[real], plain[real])


def test_bad_inputs_are_named():
    net = Coconut(_core(), LATENT)
    with pytest.raises(ValueError, match="first token"):
        net(torch.tensor([[LATENT, 6, 7]]))
    with pytest.raises(ValueError, match="latent_id"):
        Coconut(_core(), 999)
    with pytest.raises(ValueError, match="idx must be"):
        net(torch.tensor([6, 7]))
    with pytest.raises(TypeError, match="causal LM"):
        Coconut(torch.nn.Linear(2, 2), LATENT)
