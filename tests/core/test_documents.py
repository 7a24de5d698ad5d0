"""Rows packed with several documents (`document_ids`): each document computes what it
would compute alone, in outputs and gradients; one document per row changes nothing."""

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from minirepro.core.documents import document_layout, left_pad_document_ids
from minirepro.core.generate import generate
from minirepro.core.hf_llama import to_hf
from minirepro.core.model import ModelConfig, Transformer, register_attention, register_mixer
from minirepro.core.train import TrainConfig, lm_loss, train

V = 53


def _model(attention="sdpa", n_kv_head=2, seed=0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=V, n_layer=2, n_head=4, n_kv_head=n_kv_head, d_model=32, max_seq_len=64,
        attention=attention,
    )  # fmt: skip
    return Transformer(cfg)


def _ids_of(lengths: list[int]) -> torch.Tensor:
    """Document ids of consecutive documents of `lengths` (ids 0, 1, 2, ... per document)."""
    return torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_one_document_per_row_changes_nothing(attention):
    model = _model(attention)
    x = torch.randint(0, V, (3, 29))
    for ids in (torch.zeros_like(x), torch.full_like(x, 7)):
        assert_close(model(x, document_ids=ids), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("layout", [[5, 11, 1, 14], [31], [1, 1, 29], [16, 15]])
def test_packed_row_equals_documents_alone(attention, layout):
    """Outputs and parameter gradients of a packed row equal the sum over its documents."""
    model = _model(attention)
    ref = _model(attention)
    x = torch.randint(0, V, (1, sum(layout)))
    w = torch.randn(sum(layout), V)  # a loss that weighs every output differently
    out = model(x, document_ids=_ids_of(layout)[None])
    (out[0] * w).sum().backward()
    pieces, start = [], 0
    for n in layout:
        piece = ref(x[:, start : start + n])
        (piece[0] * w[start : start + n]).sum().backward()
        pieces.append(piece)
        start += n
    assert_close(out, torch.cat(pieces, 1), rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_packed_rows_equal_hf_llama_per_document():
    """The reference nobody here wrote: HF Llama on each document alone."""
    model = _model()
    hf = to_hf(model)
    layouts = [[9, 4, 12], [25]]
    x = torch.randint(0, V, (2, 25))
    ids = torch.stack([_ids_of(lay) for lay in layouts]) * 3 + 1  # any integers work
    out = model(x, document_ids=ids)
    for r, lay in enumerate(layouts):
        start = 0
        for n in lay:
            ref = hf(x[r : r + 1, start : start + n]).logits
            assert_close(out[r : r + 1, start : start + n], ref, rtol=1e-5, atol=1e-5)
            start += n


def test_repeated_ids_in_separate_runs_are_separate_documents():
    lay = document_layout(torch.tensor([[4, 4, 2, 4, 4]]), 0)
    assert lay.positions.tolist() == [[0, 1, 0, 0, 1]]
    assert not bool(lay.mask[0, 0, 3, :2].any())


@pytest.mark.parametrize("use_cache", [True, False])
def test_left_padded_batch_generates_as_each_prompt_alone(use_cache):
    model = _model().eval()
    prompts = [torch.randint(1, V, (n,)).tolist() for n in (3, 9, 6)]
    S = max(map(len, prompts))
    padded = torch.tensor([[0] * (S - len(p)) + p for p in prompts])
    docs = left_pad_document_ids([len(p) for p in prompts], S)
    batch = generate(model, padded, max_new_tokens=7, use_cache=use_cache, document_ids=docs)
    for p, got in zip(prompts, batch):
        assert got == generate(model, [p], max_new_tokens=7)[0]


def test_cache_continues_the_last_document():
    """Chunked decoding with a cache equals one forward pass over the whole packed row."""
    model = _model().eval()
    x = torch.randint(0, V, (2, 20))
    ids = torch.stack([_ids_of([4, 16]), _ids_of([12, 8])])
    full = model(x, document_ids=ids)
    cache = model.new_cache(2, 20)
    parts = [model(x[:, :10], cache, document_ids=ids[:, :10])]
    parts += [model(x[:, 10:14], cache, document_ids=ids[:, 10:14])]
    parts += [model(x[:, t : t + 1], cache) for t in range(14, 20)]  # no ids: continue
    assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)


def test_lm_loss_and_train_take_document_ids():
    model = _model()
    x = torch.randint(0, V, (2, 16))
    ids = torch.stack([_ids_of([6, 10]), _ids_of([16])])
    y = torch.randint(0, V, (2, 16))
    loss = lm_loss(model, (x, y, ids))
    ref = nn.functional.cross_entropy(model(x, document_ids=ids).flatten(0, 1), y.flatten())
    assert_close(loss, ref)
    state = train(
        model, TrainConfig(steps=3, batch_size=2, warmup_steps=1), lambda i, g: (x, y, ids)
    )
    assert state.history[-1]["loss"] < loss.item()


class _Identity(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()

    def new_cache(self, *a):
        return None

    def forward(self, x, inp):
        return x


def test_bad_document_ids_errors():
    model = _model()
    x = torch.randint(0, V, (2, 8))
    with pytest.raises(ValueError, match="shape"):
        model(x, document_ids=torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        model(x, document_ids=torch.zeros(2, 8))
    cache = model.new_cache(2, 16)
    model(x, cache)
    with pytest.raises(ValueError, match="first forward pass"):
        model(x, cache, document_ids=torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="lengths"):
        left_pad_document_ids([0, 3], 4)
    register_mixer("identity_for_doc_test", _Identity)
    torch.manual_seed(0)
    other = Transformer(
        ModelConfig(vocab_size=V, n_layer=2, n_head=2, d_model=16,
                    mixer=("attention", "identity_for_doc_test"))
    )  # fmt: skip
    with pytest.raises(ValueError, match="cannot separate documents"):
        other(x, document_ids=torch.zeros_like(x))
    register_attention("causal_only_for_doc_test", lambda cfg: lambda q, k, v, *, q_start: q)
    masked = _model("causal_only_for_doc_test")
    with pytest.raises(ValueError, match="takes no document mask"):
        masked(x, document_ids=torch.zeros_like(x))
