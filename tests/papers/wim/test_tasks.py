import json
from collections import Counter

import pytest

from minirepro.papers.wim import contains_answer, cwe_f1, gold_relevance, precision_recall
from minirepro.papers.wim.segment import segment_context
from minirepro.tasks.haystack import cwe_item, multihop_item
from minirepro.tasks.hotpotqa import load_hotpotqa


def test_multihop_item_is_seeded_and_holds_both_facts_far_apart():
    a, b = multihop_item(4, 2, 3000), multihop_item(4, 2, 3000)
    assert a == b and a != multihop_item(5, 2, 3000)
    f1, f2 = a.evidence
    i, j = sorted([a.context.index(f1), a.context.index(f2)])
    assert j - i > len(a.context) / 4  # in different thirds of the text
    assert a.answers[0] in f1 + f2 and a.answers[0] not in a.question
    assert 2700 < len(a.context.split()) * 1.3 < 3600


def test_distractor_chains_use_other_names():
    item = multihop_item(0, 0, 2000, n_distractors=4)
    city = item.answers[0]
    assert item.context.count(city) == 1  # no distractor shares the answer


def test_cwe_item_counts():
    item = cwe_item(1, 0, 3000, n_common=5, freq_common=24)
    words = [line.split(". ", 1)[1] for line in item.context.split("\n")]
    counts = Counter(words)
    assert {w for w, _ in counts.most_common(5)} == set(item.answers)
    assert all(counts[w] == 24 for w in item.answers)
    assert max(c for w, c in counts.items() if w not in item.answers) <= 8
    assert [int(line.split(".")[0]) for line in item.context.split("\n")] == list(
        range(1, len(words) + 1)
    )


def test_scores():
    assert contains_answer("She works in Port Halvey, I think.", ["port halvey"])
    assert not contains_answer("Port Halveyford", ["Port Halvey"])
    item = cwe_item(0, 0, 1000, n_common=4, freq_common=12)
    gold = list(item.answers)
    assert cwe_f1("The words are " + ", ".join(gold), item) == 1.0
    assert cwe_f1("The words are " + " ".join(gold[:2]), item) == pytest.approx(2 / 3)
    assert cwe_f1("nothing here", item) == 0.0
    assert precision_recall([True, True, False], [True, False, True]) == (0.5, 0.5)
    with pytest.raises(ValueError, match="predictions"):
        precision_recall([True], [True, False])


def test_gold_relevance_marks_the_evidence_segments():
    item = multihop_item(2, 0, 1500)
    segs = segment_context(item.context, 100, lambda t: t.split())
    gold = gold_relevance(segs, item)
    assert 1 <= sum(gold) <= 2
    assert all(any(e in s.text for e in item.evidence) == g for s, g in zip(segs, gold))


RECORD = {
    "_id": "x1",
    "question": "Which city hosts the club of Ada?",
    "answer": "Dunmoor",
    "context": [["Ada", ["Ada is in the Chess Club.", " She likes tea."]],
                ["Chess Club", ["The Chess Club meets in Dunmoor."]]],
    "supporting_facts": [["Ada", 0], ["Chess Club", 0]],
}  # fmt: skip


def test_load_hotpotqa_json_and_jsonl(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([RECORD, RECORD]))
    (tmp_path / "b.jsonl").write_text(json.dumps(RECORD) + "\n\n" + json.dumps(RECORD) + "\n")
    for name in ("a.json", "b.jsonl"):
        items = load_hotpotqa(tmp_path / name)
        assert len(items) == 2
        it = items[0]
        assert it.answers == ("Dunmoor",) and it.kind == "hotpotqa"
        assert it.evidence == ("Ada is in the Chess Club.", "The Chess Club meets in Dunmoor.")
        assert all(e in it.context for e in it.evidence)
    assert len(load_hotpotqa(tmp_path / "a.json", limit=1)) == 1


@pytest.mark.parametrize(
    "change, match",
    [
        ({"question": ""}, "question"),
        ({"answer": 3}, "answer"),
        ({"context": [["Ada", "not a list"]]}, r"context\[0\]"),
        ({"supporting_facts": [["Nobody", 0]]}, r"supporting_facts\[0\]"),
        ({"supporting_facts": [["Ada", 9]]}, "names no sentence"),
    ],
)
def test_malformed_hotpotqa_records(tmp_path, change, match):
    (tmp_path / "bad.json").write_text(json.dumps([RECORD, RECORD | change]))
    with pytest.raises(ValueError, match=match) as err:
        load_hotpotqa(tmp_path / "bad.json")
    assert "record 1" in str(err.value)


def test_hotpotqa_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_hotpotqa(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="neither a JSON list nor JSON lines"):
        load_hotpotqa(tmp_path / "x.json")
    (tmp_path / "m.json").write_text(json.dumps({"question": "q"}))
    with pytest.raises(ValueError, match="missing field 'answer'"):
        load_hotpotqa(tmp_path / "m.json")
