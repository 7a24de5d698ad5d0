import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minirepro.core.tokenizer import (
    DEFAULT_SPECIALS,
    CharTokenizer,
    WordTokenizer,
    load_tokenizer,
)

# Includes "<", ">" and letters of "<pad>" so that literal specials can appear in the text.
_CHARS = st.characters(codec="utf-8", exclude_categories=["Cs"])
_WORDS = st.text(alphabet="abcxyzé<>", min_size=1, max_size=6)


@given(st.text(alphabet=_CHARS, min_size=1, max_size=80))
def test_char_round_trip(text):
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids[1:-1], skip_special=False) == text
    if not any(s in text for s in DEFAULT_SPECIALS):
        assert tok.decode(ids) == text
        assert len(ids) == len(text) + 2


@given(st.lists(_WORDS, min_size=1, max_size=12))
def test_word_round_trip(words):
    text = " ".join(words)
    tok = WordTokenizer.from_texts([text])
    assert tok.decode(tok.encode(text), skip_special=False) == text


def test_special_ids_come_first():
    tok = CharTokenizer.from_text("abc", specials=["<sep>"])
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.token_to_id("<sep>") == 4
    assert tok.vocab == ["<pad>", "<bos>", "<eos>", "<unk>", "<sep>", "a", "b", "c"]
    assert tok.vocab_size == len(tok) == 8


@pytest.mark.parametrize("kind", ["char", "word"])
def test_literal_specials_are_one_token(kind):
    text = "a <sep> b<eos>"
    tok = (
        CharTokenizer.from_text("a b", specials=["<sep>", "<sep2>"])
        if kind == "char"
        else WordTokenizer.from_texts(["a b"], specials=["<sep>", "<sep2>"])
    )
    ids = tok.encode(text)
    sep = tok.token_to_id("<sep>")
    assert ids.count(sep) == 1 and ids[-1] == tok.eos_id
    assert tok.unk_id not in ids
    assert tok.token_to_id("<sep2>") in tok.encode("a<sep2>")  # longest special wins
    expected = {"char": "a <sep> b<eos>", "word": "a <sep> b <eos>"}[kind]
    assert tok.decode(ids, skip_special=False) == expected
    assert tok.decode(ids) == {"char": "a  b", "word": "a b"}[kind]


def test_word_punctuation_split():
    tok = WordTokenizer.from_texts(["Hello, world! Hello."], split_punct=True)
    assert tok.vocab[len(tok.specials) :] == ["Hello", "!", ",", ".", "world"]  # count, then a-z
    assert tok.decode(tok.encode("world, Hello!")) == "world , Hello !"
    plain = WordTokenizer.from_texts(["Hello, world!"])
    assert plain.vocab[len(plain.specials) :] == ["Hello,", "world!"]


def test_word_min_freq_and_max_size():
    texts = ["a a a b b c", "a b d"]
    assert WordTokenizer.from_texts(texts, min_freq=2).vocab[4:] == ["a", "b"]
    assert WordTokenizer.from_texts(texts, max_size=3).vocab[4:] == ["a", "b", "c"]


def test_unknown_maps_to_unk_or_raises_when_strict():
    tok = CharTokenizer.from_text("ab")
    assert tok.encode("abz") == [4, 5, tok.unk_id]
    strict = CharTokenizer.from_text("ab", strict=True)
    with pytest.raises(ValueError, match="unknown symbol 'z'"):
        strict.encode("abz")
    words = WordTokenizer.from_texts(["x y"], strict=True)
    with pytest.raises(ValueError, match="unknown symbol 'q'"):
        words.encode("x q")


@pytest.mark.parametrize(
    "tok",
    [
        CharTokenizer.from_text("hello world", specials=["<sep>"], strict=True),
        WordTokenizer.from_texts(["hello, world"], specials=["<sep>"], split_punct=True),
    ],
)
def test_save_load_equal(tmp_path, tok):
    path = tmp_path / "tok.json"
    tok.save(path)
    loaded = load_tokenizer(path)
    assert type(loaded) is type(tok) and loaded == tok
    assert loaded.encode("hello <sep> world") == tok.encode("hello <sep> world")
    assert loaded.strict == tok.strict


def test_encode_batch_pads_right_with_mask():
    tok = CharTokenizer.from_text("abcd")
    ids, mask = tok.encode_batch(["ab", "abcd", ""], add_bos=True)
    assert (
        ids.shape == mask.shape == (3, 5) and ids.dtype == torch.long and mask.dtype == torch.bool
    )
    assert mask.sum(1).tolist() == [3, 5, 1]
    assert (ids[~mask] == tok.pad_id).all()
    assert tok.decode_batch(ids) == ["ab", "abcd", ""]
    ids, mask = tok.encode_batch(["ab"], pad_to=6)
    assert ids.shape == (1, 6) and mask[0].tolist() == [True, True] + [False] * 4
    with pytest.raises(ValueError, match="longer than pad_to=1"):
        tok.encode_batch(["ab"], pad_to=1)


def test_errors():
    with pytest.raises(ValueError, match="vocab is empty"):
        CharTokenizer.from_text("")
    with pytest.raises(ValueError, match="duplicate"):
        CharTokenizer(["a", "b", "a"])
    with pytest.raises(ValueError, match="duplicate"):
        WordTokenizer(["<sep>", "x"], specials=["<sep>"])
    with pytest.raises(ValueError, match="single characters"):
        CharTokenizer(["ab"])
    with pytest.raises(ValueError, match="without spaces"):
        WordTokenizer(["a b"])
    with pytest.raises(ValueError, match="special token"):
        CharTokenizer(["a"], specials=[""])
    tok = CharTokenizer.from_text("ab")
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([4, 99])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(torch.zeros(2, 2, dtype=torch.long))


def test_load_rejects_unknown_type(tmp_path):
    path = tmp_path / "tok.json"
    path.write_text('{"type": "bpe", "vocab": [], "specials": []}')
    with pytest.raises(ValueError, match="unknown tokenizer type 'bpe'"):
        load_tokenizer(path)
