"""The synthetic RAG set: answers in the passage, swapped entities absent from it."""

import pytest

from minirepro.tasks.rag import is_faithful, make_rag_examples, mentions, rag_samples


def test_examples_are_deterministic_and_answerable():
    a, b = make_rag_examples(12, seed=3), make_rag_examples(12, seed=3)
    assert [e.passage for e in a] == [e.passage for e in b]
    assert [e.passage for e in a] != [e.passage for e in make_rag_examples(12, seed=4)]
    for e in a:
        assert e.answer in e.passage and e.town in e.question
    assert {e.kind for e in a} == {"mayor", "export", "river", "founded"}
    with pytest.raises(ValueError):
        make_rag_examples(0)


def test_swapped_responses_name_an_entity_absent_from_the_passage():
    examples = make_rag_examples(20, seed=1)
    samples = rag_samples(examples, seed=1)
    assert len(samples) == 40 and sum(s.hallucinated for s in samples) == 20
    for e, (good, bad) in zip(examples, zip(samples[::2], samples[1::2]), strict=True):
        assert not good.hallucinated and bad.hallucinated and good.prompt == bad.prompt
        assert e.answer in good.response and bad.meta["span"] not in e.passage
        assert is_faithful(e, good.response) and not is_faithful(e, bad.response)


def test_is_faithful_on_free_text():
    e = next(x for x in make_rag_examples(8, seed=0) if x.kind == "mayor")
    first, last = e.answer.split()
    assert is_faithful(e, f"According to the passage, {e.answer} is the mayor.")
    assert not is_faithful(e, "The passage does not say.")
    other = "Hilda" if first != "Hilda" else "Oskar"
    assert not is_faithful(e, f"{e.answer}, and before that {other} {last}.")
    assert mentions("founded", "in 1688 or 1702, not 20") == {"1688", "1702"}
