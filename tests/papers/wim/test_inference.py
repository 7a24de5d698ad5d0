import pytest

from minirepro.papers.wim import (
    HFLM,
    WiMConfig,
    WiMSession,
    full_context,
    run_wim,
    stop_after,
)
from minirepro.tasks.haystack import multihop_item

CFG = WiMConfig(segment_tokens=96, max_margin_tokens=6, max_answer_tokens=5)


@pytest.fixture(scope="module")
def item(tokenizer):
    return multihop_item(1, 0, n_tokens=400, n_distractors=1,
                         length=lambda t: len(tokenizer.encode(t, add_special_tokens=False)))  # fmt: skip


def test_margins_use_no_positions(tiny_core, tokenizer, item):
    session = WiMSession(tiny_core, item.context, item.question, CFG, tokenizer=tokenizer)
    margins = list(session)
    assert len(margins) == len(session.segments) >= 4
    expected = len(session.prefix_ids) + sum(len(s) for s in session.segments)
    assert session.lm.cache_len(session.cache) == expected  # only prefix + segments remain
    assert session.lm.cache_len(session.classifier_cache) == 0
    assert all(m.classifier_output.startswith(("YES", "NO")) for m in margins)
    assert [m.segment.index for m in margins] == list(range(len(margins)))
    times = [m.seconds for m in margins]
    assert times == sorted(times)


def test_answer_twice_is_the_same_and_full_context_matches(tiny_core, tokenizer, item):
    """answer() crops back after itself; answer(use_margins=False) on the session's cache is
    the full-context baseline computed with a fresh cache."""
    session = WiMSession(tiny_core, item.context, item.question, CFG, tokenizer=tokenizer)
    list(session)
    a, b = session.answer(), session.answer()
    assert a.answer == b.answer
    shared = session.answer(use_margins=False).answer
    fresh = full_context(tiny_core, item.context, item.question, CFG, tokenizer=tokenizer)
    assert shared == fresh.answer


def test_core_and_hf_write_the_same_margins(tiny_core, tiny_hf, tokenizer, item):
    outs = [
        run_wim(model, item.context, item.question, CFG, tokenizer=tokenizer)
        for model in (tiny_core, tiny_hf)
    ]
    assert isinstance(WiMSession(tiny_hf, item.context, "q?", CFG, tokenizer=tokenizer).lm, HFLM)
    assert [m.text for m in outs[0].margins] == [m.text for m in outs[1].margins]
    assert [m.relevant for m in outs[0].margins] == [m.relevant for m in outs[1].margins]
    assert outs[0].answer == outs[1].answer


def test_streaming_callback_and_early_exit(tiny_core, tokenizer, item):
    seen = []
    cfg = WiMConfig(segment_tokens=96, max_margin_tokens=4, max_answer_tokens=3, classifier="all")
    out = run_wim(tiny_core, item.context, item.question, cfg, tokenizer=tokenizer,
                  on_margin=seen.append, early_exit=lambda ms: len(ms) == 2)  # fmt: skip
    assert len(seen) == 2 and out.segments_read == 2 < out.n_segments
    assert [m.text for m in seen] == [m.text for m in out.margins]
    rule = stop_after(1)
    assert not rule([]) and rule(out.margins) == any(m.relevant for m in out.margins)


def test_bad_input(tiny_core, tokenizer):
    with pytest.raises(ValueError, match="query is empty"):
        WiMSession(tiny_core, "Some text.", "  ", CFG, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="context is empty"):
        WiMSession(tiny_core, "   ", "Why?", CFG, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="does not fit"):
        WiMSession(tiny_core, "word " * 5000, "Why?", CFG, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="classifier"):
        WiMConfig(classifier="maybe")
    with pytest.raises(TypeError, match="tokenizer"):
        WiMSession(tiny_core, "Some text.", "Why?", CFG)
    with pytest.raises(ValueError, match="stop_after|n_relevant"):
        stop_after(0)
    s = WiMSession(tiny_core, "One. Two.", "Why?", CFG, tokenizer=tokenizer)
    list(s)
    with pytest.raises(RuntimeError, match="every segment"):
        s.step()


@pytest.mark.llm
def test_smollm2_wim_and_full_context_on_the_real_model(smollm2):
    """The real model through a whole session: margins are written and cropped away, and
    the full-context answer from the session's cache equals a fresh full-context run."""
    context = (
        "Ada Brennock works at the Copperleaf Tea House. "
        + "The harbour was quiet and the fishermen mended their nets. " * 4
        + "\n\nThe Copperleaf Tea House is located in Dunmoor. "
        + "The council debated the new bridge for most of the evening. " * 3
    )
    question = "In which city does Ada Brennock work?"
    cfg = WiMConfig(segment_tokens=64, max_margin_tokens=8, max_answer_tokens=10)
    session = WiMSession(smollm2, context, question, cfg)
    margins = list(session)
    assert len(margins) >= 2 and all(m.text for m in margins)
    assert session.lm.cache_len(session.cache) == len(session.prefix_ids) + sum(
        len(s) for s in session.segments
    )
    shared = session.answer(use_margins=False).answer
    assert shared == full_context(smollm2, context, question, cfg).answer
    assert session.answer().answer  # with margins: some answer
