import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minirepro.papers.wim import segment_context, split_sentences


def char_encode(text):
    return [ord(c) for c in text]


def word_encode(text):  # one token per whitespace-separated word (0 for whitespace only)
    return [hash_word(w) for w in text.split()]


def hash_word(w):
    return sum(map(ord, w)) % 1000


sentences = st.lists(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40).map(
        lambda s: s + st_end(s)
    ),
    max_size=30,
)


def st_end(s):
    return "." if len(s) % 3 else "!\n"


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=400))
def test_split_sentences_loses_nothing(text):
    assert "".join(split_sentences(text)) == text


@settings(max_examples=150, deadline=None)
@given(sentences, st.integers(1, 60))
def test_segments_keep_every_character_and_respect_the_budget(parts, budget):
    text = " ".join(parts)
    if not text.strip():
        with pytest.raises(ValueError, match="empty"):
            segment_context(text, budget, char_encode)
        return
    segs = segment_context(text, budget, char_encode)
    assert "".join(s.text for s in segs) == text  # no sentence dropped, nothing reordered
    assert all(0 < len(s.ids) <= budget for s in segs)
    assert [s.index for s in segs] == list(range(len(segs)))
    for s in segs:  # spans point at the text, ids are the text's tokens
        assert text[s.start : s.end] == s.text
        assert s.ids == char_encode(s.text)


def test_sentences_stay_whole_when_they_fit():
    text = "Alpha beta gamma. Delta epsilon! Zeta eta theta iota? Kappa."
    segs = segment_context(text, 4, word_encode)
    assert [s.text for s in segs] == [
        "Alpha beta gamma.",
        " Delta epsilon!",
        " Zeta eta theta iota?",
        " Kappa.",
    ]


def test_overflowing_sentence_starts_the_next_segment_not_lost():
    # the reference drops the sentence that overflows a segment; here it opens the next one
    text = "One two three. Four five six seven. Eight."
    segs = segment_context(text, 5, word_encode)
    assert "".join(s.text for s in segs) == text
    assert segs[0].text == "One two three."
    assert segs[1].text == " Four five six seven. Eight."


def test_over_long_sentence_is_split_at_words():
    long = " ".join(f"w{i}" for i in range(23)) + "."
    text = f"Short one. {long} Tail."
    segs = segment_context(text, 5, word_encode)
    assert "".join(s.text for s in segs) == text
    assert all(len(s) <= 5 for s in segs)
    assert sum(len(s) for s in segs) == len(word_encode(text))


def test_word_longer_than_a_segment_is_split_at_characters():
    text = "x" * 50 + ". ok."
    segs = segment_context(text, 8, char_encode)
    assert "".join(s.text for s in segs) == text and all(len(s) <= 8 for s in segs)


def test_real_tokenizer_keeps_each_fact_in_one_segment(tokenizer):
    from minirepro.tasks.haystack import multihop_item

    enc = lambda t: tokenizer.encode(t, add_special_tokens=False)  # noqa: E731
    item = multihop_item(3, 1, n_tokens=1500, length=lambda t: len(enc(t)))
    segs = segment_context(item.context, 256, enc)
    assert "".join(s.text for s in segs) == item.context
    assert all(len(s) <= 256 for s in segs)
    for fact in item.evidence:
        assert sum(fact in s.text for s in segs) == 1


@pytest.mark.parametrize("budget", [0, -3, 1.5])
def test_bad_budget(budget):
    with pytest.raises(ValueError, match="budget"):
        segment_context("Some text.", budget, char_encode)
