"""add_thought_tokens: a transformers model and tokenizer made ready for Coconut."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from minirepro.papers.coconut import LATENT, Coconut
from minirepro.papers.coconut.pretrained import THOUGHT_TOKENS, add_thought_tokens
from minirepro.papers.coconut.reference import naive_latent_forward

WORDS = ["[UNK]", "<<", "Tom", "is", "a", "wumpus", "yumpus", "or", "?", "."]


def _pair(tie: bool):
    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      tie_word_embeddings=tie)  # fmt: skip
    return LlamaForCausalLM(cfg).eval(), tok


@pytest.mark.parametrize("tie", [True, False])
def test_new_tokens_start_from_the_init_token_and_coconut_runs(tie):
    model, tok = _pair(tie)
    before_in = model.get_input_embeddings().weight.clone()
    before_out = model.get_output_embeddings().weight.clone()
    ids = add_thought_tokens(model, tok, init_token="<<")
    assert list(ids) == list(THOUGHT_TOKENS) and sorted(ids.values()) == list(range(10, 14))
    emb_in = model.get_input_embeddings().weight
    emb_out = model.get_output_embeddings().weight
    assert emb_in.shape[0] == emb_out.shape[0] == len(tok) == 14
    torch.testing.assert_close(emb_in[:10], before_in)  # old rows untouched
    torch.testing.assert_close(emb_out[:10], before_out)
    for i in ids.values():
        torch.testing.assert_close(emb_in[i], before_in[1])  # "<<"'s row
        torch.testing.assert_close(emb_out[i], before_out[1])
    # markers are never split, and the model runs as a Coconut, equal to the naive oracle
    text = f"Tom is a wumpus or yumpus ? <bot> {LATENT} {LATENT} <eot> Tom is a wumpus ."
    x = torch.tensor([tok(text).input_ids])
    assert int((x == ids[LATENT]).sum()) == 2 and ids["<bot>"] in x[0].tolist()
    net = Coconut(model, latent_id=ids[LATENT])
    with torch.no_grad():
        logits = net(x)
        ref, _ = naive_latent_forward(net, x, None)
    assert logits.shape == (1, x.shape[1], 14)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)


def test_mean_init_and_calling_twice_changes_nothing():
    model, tok = _pair(False)
    old = model.get_input_embeddings().weight[:10].clone()
    ids = add_thought_tokens(model, tok)
    w = model.get_input_embeddings().weight
    torch.testing.assert_close(w[ids["<eot>"]], old.mean(0))
    snapshot = w.clone()
    assert add_thought_tokens(model, tok, init_token="<<") == ids
    torch.testing.assert_close(model.get_input_embeddings().weight, snapshot)


def test_bad_input_is_named():
    model, tok = _pair(True)
    with pytest.raises(ValueError, match="init_token 'Tom is' is not a single token"):
        add_thought_tokens(model, tok, init_token="Tom is")
    with pytest.raises(ValueError, match="transformers tokenizer"):
        add_thought_tokens(model, object())
    with pytest.raises(ValueError, match="transformers model"):
        add_thought_tokens(torch.nn.Linear(2, 2), tok)
    assert len(tok) == 10  # nothing added on failure
