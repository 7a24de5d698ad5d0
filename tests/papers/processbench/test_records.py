"""Loading ProcessBench files: formats, errors naming record and field, skip_bad."""

import json

import pytest

from minirepro.papers.processbench import Record, RecordError, load_records, write_records

GOOD = {
    "id": "gsm8k-0",
    "generator": "Qwen2-7B-Instruct",
    "problem": "Sue has 3 flamingos ...",
    "steps": ["Step one.", "Step two.", "So the answer is 5."],
    "final_answer_correct": False,
    "label": 1,
}


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_roundtrip(tmp_path):
    rows = [GOOD, GOOD | {"id": "math-3", "label": -1, "final_answer_correct": True}]
    res = load_records(_write_jsonl(tmp_path / "pb.jsonl", rows))
    assert res.n_skipped == 0
    a, b = res.records
    assert (a.subset, a.label, a.steps[1], a.generator) == (
        "gsm8k",
        1,
        "Step two.",
        "Qwen2-7B-Instruct",
    )
    assert b.subset == "math"
    out = write_records(res.records, tmp_path / "again.jsonl")
    assert [json.loads(x) for x in out.read_text().splitlines()] == rows


def test_json_list_and_subset_dict(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps([GOOD]))
    assert load_records(tmp_path / "list.json").records[0].id == "gsm8k-0"
    split = {"olympiadbench": [GOOD | {"id": "q-7"}]}
    (tmp_path / "splits.json").write_text(json.dumps(split))
    r = load_records(tmp_path / "splits.json").records[0]
    assert r.subset == "olympiadbench" and r.to_dict()["subset"] == "olympiadbench"


def test_extra_fields_are_kept(tmp_path):
    res = load_records(_write_jsonl(tmp_path / "x.jsonl", [GOOD | {"error_kind": "skipped"}]))
    assert res.records[0].meta == {"error_kind": "skipped"}
    assert res.records[0].to_dict()["error_kind"] == "skipped"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"label": 3},
            r"line 2 \(id 'gsm8k-1'\): field 'label' must be -1 or a step index in \[0, 2\]",
        ),
        ({"label": -2}, "field 'label' must be -1 or a step index"),
        ({"label": "1"}, "field 'label' must be an integer"),
        ({"label": True}, "field 'label' must be an integer"),
        ({"steps": []}, "field 'steps' must be a non-empty list"),
        ({"steps": "one step"}, "field 'steps' must be a list of strings"),
        ({"steps": ["a", 2]}, "field 'steps' must be a list of strings"),
        ({"final_answer_correct": "yes"}, "field 'final_answer_correct' must be true or false"),
        ({"problem": None}, "field 'problem' must be a string"),
        ({"id": 5}, "line 2: field 'id' must be a string"),
    ],
)
def test_malformed_record_names_record_and_field(tmp_path, change, message):
    bad = GOOD | {"id": "gsm8k-1"} | change
    path = _write_jsonl(tmp_path / "pb.jsonl", [GOOD, bad])
    with pytest.raises(RecordError, match=message):
        load_records(path)
    res = load_records(path, skip_bad=True)
    assert [r.id for r in res.records] == ["gsm8k-0"] and res.n_skipped == 1
    assert "line 2" in res.skipped[0]


def test_missing_fields_and_not_an_object(tmp_path):
    row = {k: v for k, v in GOOD.items() if k not in ("label", "steps")}
    path = _write_jsonl(tmp_path / "a.jsonl", [row])
    with pytest.raises(
        RecordError, match=r"line 1 \(id 'gsm8k-0'\): missing field\(s\) 'steps', 'label'"
    ):
        load_records(path)
    (tmp_path / "b.jsonl").write_text('[1, 2]\n{"id": \n')
    with pytest.raises(RecordError, match="line 1: a record must be a JSON object, got list"):
        load_records(tmp_path / "b.jsonl")
    res = load_records(tmp_path / "b.jsonl", skip_bad=True)
    assert res.n_skipped == 2 and "not valid JSON" in res.skipped[1]


def test_duplicate_ids(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD])
    with pytest.raises(RecordError, match="duplicate id 'gsm8k-0'"):
        load_records(path)


def test_files_that_are_not_processbench(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_records(tmp_path / "none.jsonl")
    (tmp_path / "x.json").write_text("not json at all")
    with pytest.raises(RecordError, match="not valid JSON"):
        load_records(tmp_path / "x.json")
    (tmp_path / "n.json").write_text("42")
    with pytest.raises(RecordError, match="expected a list of records"):
        load_records(tmp_path / "n.json")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(RecordError, match="not a UTF-8 text file"):
        load_records(tmp_path / "bin.jsonl")


def test_record_defaults_subset_from_id():
    assert Record("omnimath-12", "p", ("a",), -1, True).subset == "omnimath"
    assert Record("plain", "p", ("a",), -1, True).subset == "plain"
    r = Record("a-1", "p", ["x"], -1, True, meta={"op": 3})
    assert r.steps == ("x",) and len({r, r}) == 1  # hashable despite its meta dict
