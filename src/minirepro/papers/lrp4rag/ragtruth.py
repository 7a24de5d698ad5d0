"""Read RAGTruth (Niu et al. 2024) files a user supplies, as LRP4RAG uses them.

RAGTruth ships two JSON-lines files:

- `source_info.jsonl`: one record per prompt, `{"source_id", "task_type", "source",
  "source_info": {"question", "passages"} | ..., "prompt"}`;
- `response.jsonl`: one record per generated response, `{"id", "source_id", "model",
  "temperature", "labels": [span, ...], "split", "quality", "response"}`.

A response is hallucinated when its `labels` list is non-empty. LRP4RAG keeps the QA task
only. Every malformed record raises a `RAGTruthError` naming the file, the line and the
problem; nothing is skipped silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from minirepro.tasks.rag import RAGSample

__all__ = ["RAGTruthError", "load_ragtruth", "read_jsonl"]

SOURCE_FIELDS = ("source_id", "task_type", "prompt")
RESPONSE_FIELDS = ("source_id", "labels", "response")


class RAGTruthError(ValueError):
    """A RAGTruth file or record that is not what the format says."""


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-blank line of a JSON-lines file.

    Raises:
        RAGTruthError: the file is missing, a line is not JSON, or not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise RAGTruthError(f"{path}: no such file")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RAGTruthError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise RAGTruthError(
                    f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}"
                )
            yield lineno, record


def _require(record: dict, fields: tuple[str, ...], where: str) -> None:
    missing = [f for f in fields if f not in record]
    if missing:
        raise RAGTruthError(f"{where}: missing field(s) {', '.join(missing)}")


def _text(record: dict, name: str, where: str) -> str:
    value = record[name]
    if not isinstance(value, str):
        raise RAGTruthError(f"{where}: {name!r} must be a string, got {type(value).__name__}")
    return value


def load_ragtruth(
    folder: str | Path | None = None,
    *,
    response_path: str | Path | None = None,
    source_path: str | Path | None = None,
    task_type: str | None = "QA",
    split: str | None = None,
    model: str | None = None,
) -> list[RAGSample]:
    """RAGTruth responses with their prompts, as `RAGSample`s (kind "ragtruth").

    Args:
        folder: a folder holding response.jsonl and source_info.jsonl (or give the paths).
        response_path: path of response.jsonl (default: folder / "response.jsonl").
        source_path: path of source_info.jsonl (default: folder / "source_info.jsonl").
        task_type: keep sources of this task ("QA" as in LRP4RAG; None keeps all).
        split: keep responses of this split ("train" / "test"), or all.
        model: keep responses of this generator (e.g. "llama-2-7b-chat"), or all.
    Returns:
        One sample per kept response, in file order; `meta` holds id, model, split, labels.
    Raises:
        RAGTruthError: a missing file or field, a duplicated source id, a response whose
            source is unknown, labels that are not a list, or text that is not a string.
    """
    if folder is None and (response_path is None or source_path is None):
        raise RAGTruthError("give a folder, or both response_path and source_path")
    response_path = Path(response_path or Path(folder) / "response.jsonl")
    source_path = Path(source_path or Path(folder) / "source_info.jsonl")

    sources: dict[str, dict[str, Any]] = {}
    for lineno, rec in read_jsonl(source_path):
        where = f"{source_path}:{lineno}"
        _require(rec, SOURCE_FIELDS, where)
        sid = str(rec["source_id"])
        if sid in sources:
            raise RAGTruthError(f"{where}: source_id {sid!r} appears twice")
        _text(rec, "prompt", where)
        sources[sid] = rec

    samples = []
    for lineno, rec in read_jsonl(response_path):
        where = f"{response_path}:{lineno}"
        _require(rec, RESPONSE_FIELDS, where)
        sid = str(rec["source_id"])
        if sid not in sources:
            raise RAGTruthError(f"{where}: source_id {sid!r} is not in {source_path.name}")
        src = sources[sid]
        if task_type is not None and src["task_type"] != task_type:
            continue
        if split is not None and rec.get("split") != split:
            continue
        if model is not None and rec.get("model") != model:
            continue
        labels = rec["labels"]
        if not isinstance(labels, list):
            raise RAGTruthError(f"{where}: 'labels' must be a list, got {type(labels).__name__}")
        samples.append(
            RAGSample(
                prompt=src["prompt"],
                response=_text(rec, "response", where),
                hallucinated=bool(labels),
                kind="ragtruth",
                source_id=sid,
                meta={
                    "id": rec.get("id"),
                    "model": rec.get("model"),
                    "split": rec.get("split"),
                    "labels": labels,
                },
            )
        )
    return samples
