"""The RAGTruth loader on hand-made files, including malformed ones."""

import json

import pytest

from minirepro.papers.lrp4rag import RAGTruthError, load_ragtruth

SOURCES = [
    {"source_id": "1", "task_type": "QA", "source": "MARCO", "prompt": "Passage: A.\nQ: a?",
     "source_info": {"question": "a?", "passages": "A."}},
    {"source_id": "2", "task_type": "Summary", "source": "CNN", "prompt": "Summarise: B."},
    {"source_id": "3", "task_type": "QA", "source": "MARCO", "prompt": "Passage: C.\nQ: c?"},
]  # fmt: skip
RESPONSES = [
    {"id": "10", "source_id": "1", "model": "llama-2-7b-chat", "temperature": 0.7,
     "labels": [], "split": "train", "quality": "good", "response": "A."},
    {"id": "11", "source_id": "1", "model": "mistral-7B-instruct", "temperature": 0.7,
     "labels": [{"start": 0, "end": 2, "text": "Z.", "label_type": "Evident Baseless Info"}],
     "split": "test", "quality": "good", "response": "Z."},
    {"id": "12", "source_id": "2", "model": "llama-2-7b-chat", "labels": [], "split": "train",
     "response": "B."},
    {"id": "13", "source_id": "3", "model": "llama-2-7b-chat", "labels": [{"text": "D"}],
     "split": "test", "response": "D."},
]  # fmt: skip


def _write(folder, sources=SOURCES, responses=RESPONSES, extra_source="", extra_response=""):
    (folder / "source_info.jsonl").write_text(
        "\n".join(json.dumps(s) for s in sources) + "\n" + extra_source
    )
    (folder / "response.jsonl").write_text(
        "\n".join(json.dumps(r) for r in responses) + "\n\n" + extra_response
    )
    return folder


def test_loads_qa_responses_with_labels(tmp_path):
    samples = load_ragtruth(_write(tmp_path))
    assert [s.meta["id"] for s in samples] == ["10", "11", "13"]  # the summary is not QA
    assert [s.hallucinated for s in samples] == [False, True, True]
    assert samples[0].prompt == "Passage: A.\nQ: a?" and samples[1].response == "Z."
    assert samples[1].meta["model"] == "mistral-7B-instruct" and samples[0].kind == "ragtruth"
    only = load_ragtruth(tmp_path, model="llama-2-7b-chat", split="test")
    assert [s.meta["id"] for s in only] == ["13"]
    assert len(load_ragtruth(tmp_path, task_type=None)) == 4


@pytest.mark.parametrize(
    "extra_response, match",
    [
        ("{not json\n", r"response.jsonl:6: not valid JSON"),
        ("[1, 2]\n", r"response.jsonl:6: expected a JSON object, got list"),
        ('{"source_id": "1", "response": "x"}\n', r"response.jsonl:6: missing field\(s\) labels"),
        ('{"source_id": "9", "labels": [], "response": "x"}\n', r"'9' is not in source_info"),
        ('{"source_id": "1", "labels": "none", "response": "x"}\n', r"'labels' must be a list"),
        ('{"source_id": "1", "labels": [], "response": 3}\n', r"'response' must be a string"),
    ],
)
def test_malformed_response_lines_name_file_line_and_problem(tmp_path, extra_response, match):
    with pytest.raises(RAGTruthError, match=match):
        load_ragtruth(_write(tmp_path, extra_response=extra_response))


def test_malformed_sources_and_missing_files(tmp_path):
    with pytest.raises(RAGTruthError, match=r"source_info.jsonl:4: source_id '1' appears twice"):
        load_ragtruth(_write(tmp_path, extra_source=json.dumps(SOURCES[0]) + "\n"))
    with pytest.raises(RAGTruthError, match=r"source_info.jsonl:4: missing field\(s\) task_type"):
        load_ragtruth(_write(tmp_path, extra_source='{"source_id": "7", "prompt": "p"}\n'))
    with pytest.raises(RAGTruthError, match="no such file"):
        load_ragtruth(tmp_path / "nowhere")
    with pytest.raises(RAGTruthError, match="give a folder"):
        load_ragtruth(response_path=tmp_path / "response.jsonl")
    assert issubclass(RAGTruthError, ValueError)
